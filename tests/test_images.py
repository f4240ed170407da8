"""The GPU image and the add-on, built with Docker on stand-in bases and run with the tiny model.

Base images cannot be pulled here and containers cannot reach the package index, so the bases are
stand-ins made from Debian (``tests/images/``) and pip installs from a wheelhouse built on this
machine, served on loopback (``PIP_NO_INDEX``/``PIP_FIND_LINKS`` pass through the Dockerfiles).
Needs a running Docker engine (``script/docker-engine``) and ``debootstrap``; skipped without an
engine. ``script/test-images`` runs only these.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from helpers import (
    SAMPLES_PER_FRAME,
    SAMPLES_PER_SENTENCE,
    SEED,
    SEMANTIC_TOKENS,
    assert_stream,
    describe,
    dockerfile_args,
    eventually,
    status,
    synthesize,
    torch_version,
)
from tiny_bark import place_in_hub_cache
from wyoming.event import async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from wyoming_bark.settings import PRECISIONS

pytestmark = [pytest.mark.images, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
STAND_INS = ROOT / "tests/images"
DEBIAN = "bark-test/debian:bookworm"
PYTHON_BASE = "bark-test/python:3.11-slim-bookworm"
HA_BASE = "bark-test/ha-base-debian:bookworm"
MIRROR = os.environ.get("BARK_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PORT = 10200  # both images serve (and health-check) this port; containers share the host network
URI = f"tcp://127.0.0.1:{PORT}"
BUILD_TIMEOUT = 1200
START_TIMEOUT = 180.0


def docker(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, f"docker {' '.join(args[:3])} failed:\n{result.stdout}\n{result.stderr}"
    return result


def build(tag: str, *args: str, builder: tuple[str, ...] = ("build",), timeout: float = BUILD_TIMEOUT,
          cwd: Path | None = None) -> str:  # fmt: skip
    """``docker build -t tag ...`` (``builder``: ``buildx build`` too); the image the tag named
    before is removed, so that runs do not pile up untagged images (about 1.5 GB each)."""
    old = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True, check=False
    ).stdout.strip()
    docker(*builder, "--network", "host", "-t", tag, *args, timeout=timeout, cwd=cwd)
    if old and old != docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip():
        subprocess.run(["docker", "image", "rm", old], capture_output=True, check=False)
    return tag


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0
    )


@pytest.fixture(scope="module")
def engine() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker command: install Debian's docker.io (script/docker-engine)")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        pytest.skip(
            f"no Docker engine running (script/docker-engine starts one): {info.stderr.strip()[:200]}"
        )


@pytest.fixture(scope="module")
def stand_in_bases(engine, tmp_path_factory) -> None:
    """Debian bookworm from debootstrap, and the two stand-ins built on it (kept for later runs)."""
    debian_image(DEBIAN, tmp_path_factory)
    docker("build", "--network", "host", "-t", PYTHON_BASE, str(STAND_INS / "python-base"))
    docker("build", "--network", "host", "-t", HA_BASE, str(STAND_INS / "ha-base"))


def debian_image(tag: str, tmp_path_factory, suite: str = "bookworm", arch: str = "amd64") -> None:
    """``tag``: Debian ``suite`` for ``arch`` with its Python, from debootstrap, imported once with
    that platform (kept for later runs; off amd64 debootstrap's second stage runs emulated)."""
    if image_exists(tag):
        return
    assert shutil.which("debootstrap"), "the image tests need debootstrap (apt-get install debootstrap)"
    rootfs = tmp_path_factory.mktemp("rootfs")
    subprocess.run(
        ["debootstrap", f"--arch={arch}", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         suite, str(rootfs), MIRROR],
        check=True, capture_output=True, timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    docker("import", "-", tag, stdin=tar.stdout, timeout=BUILD_TIMEOUT)
    assert tar.wait() == 0
    if arch != "amd64":
        set_architecture(tag, arch, tmp_path_factory.mktemp("save"))


def set_architecture(tag: str, arch: str, folder: Path) -> None:
    """Mark the image ``tag`` as ``linux/arch``: this engine's ``import --platform`` records
    amd64 whatever it is told, and a build for ``--platform linux/arm64`` (as the Supervisor's)
    then refuses the base. The saved image's config gets the architecture and is loaded again."""
    docker("save", "-o", str(folder / "image.tar"), tag, timeout=BUILD_TIMEOUT)
    with tarfile.open(folder / "image.tar") as saved:
        saved.extractall(folder / "image", filter="data")
    manifest = json.loads((folder / "image/manifest.json").read_text())
    config = json.loads((folder / "image" / manifest[0]["Config"]).read_text())
    config.update(architecture=arch, variant="v8" if arch == "arm64" else config.get("variant"))
    data = json.dumps(config).encode()
    name = f"{hashlib.sha256(data).hexdigest()}.json"
    (folder / "image" / manifest[0]["Config"]).unlink()
    (folder / "image" / name).write_bytes(data)
    manifest[0]["Config"] = name
    (folder / "image/manifest.json").write_text(json.dumps(manifest))
    with tarfile.open(folder / "new.tar", "w") as new:
        for path in sorted((folder / "image").iterdir()):
            new.add(path, arcname=path.name)
    docker("load", "-i", str(folder / "new.tar"), timeout=BUILD_TIMEOUT)
    shutil.rmtree(folder)
    assert docker("image", "inspect", "-f", "{{.Architecture}}", tag).stdout.strip() == arch


def supervisor_build(tag: str, arch: str, stand_in: str, pip_args: list[str], *machine_args: str) -> str:
    """The app built as the Supervisor builds it (``supervisor/apps/build.py``): ``buildx build .``
    in the app's folder with ``--platform``, its labels, and only ``BUILD_VERSION`` and
    ``BUILD_ARCH`` as build arguments, so the Dockerfile's own base is used. That base (Home
    Assistant's ``<arch>-base-debian:trixie``) is ``stand_in`` tagged under its name, with pip
    pointed at the loopback wheelhouse (the one thing added for this machine, in the stand-in,
    not the build); ``--pull`` is left out (nothing can be pulled here), and the build uses the
    host's network (the engine runs without a bridge). Without the buildx plugin, ``docker
    build`` takes the same arguments. ``machine_args``: build arguments this machine forces, each
    said where it is passed."""
    config = yaml.safe_load((ROOT / "addon/config.yaml").read_text())
    platform = {"amd64": "linux/amd64", "aarch64": "linux/arm64"}[arch]
    base = dockerfile_args(ROOT / "addon/Dockerfile")["BUILD_FROM"].replace("${BUILD_ARCH}", arch)
    pip_env = " ".join(arg for arg in pip_args if arg != "--build-arg")
    docker("build", "--network", "host", "--platform", platform, "-t", base, "-",
           input=f"FROM {stand_in}\nENV {pip_env}\n", timeout=BUILD_TIMEOUT)  # fmt: skip
    version = str(config["version"])
    labels = {
        "io.hass.version": version, "io.hass.arch": arch, "io.hass.type": "app",
        "io.hass.name": config["name"], "io.hass.description": config["description"].replace("'", ""),
        "io.hass.url": config["url"],
    }  # fmt: skip
    builder = ("buildx", "build") if docker_has_buildx() else ("build",)
    timeout = BUILD_TIMEOUT if arch == "amd64" else 3 * BUILD_TIMEOUT  # pip under qemu: many minutes
    return build(
        tag, ".", "--file", "Dockerfile", "--platform", platform,
        *[item for key, value in labels.items() for item in ("--label", f"{key}={value}")],
        "--build-arg", f"BUILD_VERSION={version}", "--build-arg", f"BUILD_ARCH={arch}", *machine_args,
        builder=builder, timeout=timeout, cwd=ROOT / "addon",
    )  # fmt: skip


def docker_has_buildx() -> bool:
    return subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode == 0


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # pip's requests are not worth a line each
        pass


@pytest.fixture(scope="module")
def pip_from_wheelhouse(wheelhouse) -> Iterator[list[str]]:
    """Build arguments that make pip in a build install from ``wheelhouse``, served on loopback."""
    with served_to_pip(wheelhouse) as build_args:
        yield build_args


# The port the wheelhouse is served on where it is free: the app's stand-in base holds the URL, so
# a fixed one keeps that base, and the layers built on it (torch, under emulation: many minutes),
# the same from run to run.
PIP_PORT = 38471


@contextmanager
def served_to_pip(folder: Path) -> Iterator[list[str]]:
    """``folder`` served on loopback, and the build arguments that make pip install from it."""
    handler = functools.partial(Quiet, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", PIP_PORT), handler)
    except OSError:  # in use: any port (the builds then start afresh)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield [
            *("--build-arg", "PIP_NO_INDEX=1"),
            *("--build-arg", f"PIP_FIND_LINKS={url}"),
            *("--build-arg", "PIP_TRUSTED_HOST=127.0.0.1"),
        ]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gpu_image(stand_in_bases, pip_from_wheelhouse) -> str:
    return build(
        "bark-test/wyoming-bark:gpu",
        "--build-arg",
        f"BASE_IMAGE={PYTHON_BASE}",
        *pip_from_wheelhouse,
        str(ROOT),
    )


@pytest.fixture(scope="module")
def addon_image(stand_in_bases, pip_from_wheelhouse) -> str:
    """The amd64 app, built the Supervisor's way. Its stand-in base is bookworm's (Python 3.11):
    for trixie's Python 3.13 this machine has only PyPI's CUDA build of torch for x86-64, whose
    nvidia-* dependencies are not mirrored (the add-on installs PyTorch's CPU build, which cannot
    be reached here). The aarch64 test below runs on a real trixie stand-in."""
    assert dockerfile_args(ROOT / "addon/Dockerfile")["TORCH_VERSION"] == torch_version(), (
        "the app installs the torch the tests run"
    )
    return supervisor_build("bark-test/wyoming-bark:addon", "amd64", HA_BASE, pip_from_wheelhouse)


def hub_data(tmp_path: Path, tiny_model: Path, repo_id: str) -> Path:
    """A data volume whose model cache holds the tiny model as ``repo_id``, writable by any user."""
    data = tmp_path / "data"
    place_in_hub_cache(tiny_model, data / "models", repo_id)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return data


def port_is_free() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", PORT)) != 0


def logs(name: str) -> str:
    result = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


@contextmanager
def container(image: str, env: dict[str, str], volumes: dict[Path, str]) -> Iterator[str]:
    """A container of ``image`` on the host network; its log is printed if the test fails."""
    assert port_is_free(), f"port {PORT} is in use: the images serve there (stop what listens)"
    name = f"bark-test-{uuid.uuid4().hex[:8]}"
    flags = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
    flags += [item for host, inside in volumes.items() for item in ("-v", f"{host}:{inside}")]
    docker("run", "-d", "--name", name, "--network", "host", *flags, image)
    try:
        yield name
    except BaseException:
        print(f"--- log of {image} ---\n{logs(name)[-6000:]}")
        raise
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


async def serving(name: str) -> Info:
    """The container's describe answer, once it gives one."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while True:
        state = docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        assert state == "true", f"container exited:\n{logs(name)[-4000:]}"
        try:
            return Info.from_event(await describe(URI))
        except (OSError, asyncio.TimeoutError):
            assert asyncio.get_running_loop().time() < deadline, "no describe answer in time"
            await asyncio.sleep(1)


def health_check(image: str, name: str) -> str:
    """The image's own HEALTHCHECK command, run inside the container; its output."""
    test = json.loads(docker("inspect", "--format", "{{json .Config.Healthcheck.Test}}", image).stdout)
    assert test[0] == "CMD", test
    result = subprocess.run(
        ["docker", "exec", name, *test[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def test_gpu_image_honours_its_environment(gpu_image, tiny_model, tmp_path):
    """Every BARK_* variable of docker-compose.yml takes effect (values unlike the image's defaults)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["bark"]["environment"]
    settings = {
        "BARK_MODEL": "suno/bark-small",
        "BARK_VOICE": "v2/de_speaker_3",
        "BARK_MAX_BATCH": "2",
        "BARK_ZEROCONF": "bark-image-test",
    }
    assert set(settings) == set(compose), "each variable of the compose file is checked here"
    assert settings["BARK_MODEL"] != compose["BARK_MODEL"] and settings["BARK_VOICE"] != compose["BARK_VOICE"]
    env = {
        **settings,
        "HF_HUB_OFFLINE": "1",
        "BARK_DEVICE": "cpu",
        "BARK_MAX_SEMANTIC_TOKENS": str(SEMANTIC_TOKENS),
        "BARK_SEED": str(SEED),
    }
    data = hub_data(tmp_path, tiny_model, "suno/bark-small")
    with container(gpu_image, env, {data: "/data"}) as name:
        info = await serving(name)
        assert {"v2/de_speaker_3", "announcer"} <= {voice.name for voice in info.tts[0].voices}
        assert_stream(await synthesize(URI, "Hello from the image."), sentences=1)
        state = await status(URI)
        assert state["model"] == "suno/bark-small" and state["loaded"] and state["device"] == "cpu"
        assert state["default_voice"] == "v2/de_speaker_3" and state["batch"]["max"] == 2
        assert "healthy: bark" in health_check(gpu_image, name)

        async def announced() -> bool:  # the server asks the network for its name for 3 s first
            return "bark-image-test._wyoming._tcp.local." in logs(name)

        await eventually(announced, what="the announcement BARK_ZEROCONF names")
        user = docker("exec", name, "id", "-u").stdout.strip()
        assert user == "1000", "the server does not run as root"


async def test_addon_runs_with_its_options(addon_image, tiny_model, voices_dir, tmp_path):
    """The add-on's run script turns the Supervisor's options into the server's settings."""
    config = yaml.safe_load((ROOT / "addon/config.yaml").read_text())
    options = {
        **config["options"], "model": "full", "voice": "v2/fr_speaker_1", "seed": SEED, "lookahead": 0,
        "language_voices": "de=v2/de_speaker_3", "cache_size_mb": 50, "sentence_silence": 0,
        "max_speech_ratio": 0,
    }  # fmt: skip
    data = hub_data(tmp_path, tiny_model, "suno/bark")
    (data / "options.json").write_text(json.dumps(options), encoding="utf-8")
    env = {"HF_HUB_OFFLINE": "1", "BARK_MAX_SEMANTIC_TOKENS": str(SEMANTIC_TOKENS)}
    app_folder = tmp_path / "app-config"  # the app's own folder (map: addon_config), at /config
    shutil.copytree(voices_dir, app_folder / "voices")
    with container(addon_image, env, {data: "/data", app_folder: "/config:ro"}) as name:
        info = await serving(name)
        voices = {voice.name for voice in info.tts[0].voices}
        assert {"v2/fr_speaker_1", "grandpa"} <= voices, "custom voices come from the app's folder"
        assert "/config/voices" in logs(name) and "/share/bark" not in logs(name)
        described = {voice.name: voice.description for voice in info.tts[0].voices}
        assert described["v2/de_speaker_3"].startswith("(default)"), "language_voices reaches the server"
        assert info.tts[0].supports_synthesize_streaming == options["streaming"]
        assert_stream(await synthesize(URI, "Bonjour.", "grandpa"), sentences=1)
        state = await status(URI)
        assert state["model"] == "suno/bark", "model: full is suno/bark"
        assert state["default_voice"] == "v2/fr_speaker_1" and state["device"] == "cpu"
        assert state["cache"] is options["cache"] and state["lookahead"] == 0
        assert "healthy: bark" in health_check(addon_image, name)


@pytest.fixture(scope="module")
def haproxy_image(stand_in_bases) -> str:
    return build("bark-test/haproxy:2.8", str(STAND_INS / "haproxy"))


def _example_env(example: dict) -> dict[str, str]:
    """A scale-out server's environment as the example sets it (its address, model, PROXY
    protocol, metrics port), on the CPU with the tiny model, not announced."""
    keep = ("BARK_URI", "BARK_MODEL", "BARK_PROXY_PROTOCOL", "BARK_METRICS_PORT")
    env = {key: str(example[key]) for key in keep}
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "BARK_DEVICE": "cpu",
        "BARK_MAX_SEMANTIC_TOKENS": str(SEMANTIC_TOKENS),
    }


async def _describing(uri: str, name: str) -> None:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while True:
        assert docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", logs(name)
        try:
            await describe(uri)
            return
        except (OSError, asyncio.TimeoutError):
            assert asyncio.get_running_loop().time() < deadline, f"{name}: no describe answer in time"
            await asyncio.sleep(1)


@pytest.mark.timeout(900)
async def test_servers_behind_haproxy_share_the_load_and_survive_a_stop(
    gpu_image, haproxy_image, tiny_model, tmp_path
):
    """examples/scale-out as it runs: two servers (CPU here, one per GPU there) behind HAProxy with
    the example's own haproxy.cfg. Requests spread over both; one stopped, the other serves every
    request (a refused connection is redispatched; the health check takes the server out)."""
    example = ROOT / "examples/scale-out"
    compose = yaml.safe_load((example / "docker-compose.yml").read_text())["services"]
    backends = compose["balancer"]["environment"]
    names = []
    with contextlib.ExitStack() as stack:
        for n, service in enumerate(("bark-1", "bark-2"), start=1):
            env = _example_env(compose[service]["environment"])
            data = hub_data(tmp_path / service, tiny_model, env["BARK_MODEL"])
            names.append(stack.enter_context(container(gpu_image, env, {data: "/data"})))
            await _describing(env["BARK_URI"], names[-1])
            assert backends[f"BARK_SERVER_{n}"] in env["BARK_URI"], "the balancer points at this server"
        balancer = stack.enter_context(
            container(
                haproxy_image, backends, {example / "haproxy.cfg": "/usr/local/etc/haproxy/haproxy.cfg:ro"}
            )
        )
        await _describing(URI, balancer)
        results = await asyncio.gather(*(synthesize(URI, f"Request {n} here.") for n in range(6)))
        for result in results:
            assert_stream(result, sentences=1)
        served = [
            (await status(compose[s]["environment"]["BARK_URI"]))["sentences"] for s in ("bark-1", "bark-2")
        ]
        assert all(served) and sum(served) == 6, f"sentences per server: {served}"

        docker("stop", "-t", "5", names[1])
        for n in range(4):  # at once, before and after the health check notices
            assert_stream(await synthesize(URI, f"Still here {n}."), sentences=1)
        await eventually(lambda: _down(balancer), what="HAProxy marking the stopped server down")
        assert (await status(compose["bark-1"]["environment"]["BARK_URI"]))["sentences"] == served[0] + 4


async def _down(balancer: str) -> bool:
    return "bark2 is DOWN" in logs(balancer)


@pytest.fixture(scope="module")
def prometheus_image(stand_in_bases) -> str:
    return build("bark-test/prometheus:example", str(STAND_INS / "prometheus"))


def _query(expression: str) -> float | None:
    """One value from Prometheus' own HTTP API (None: no series yet)."""
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            result = json.load(answer)["data"]["result"]
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None


async def _loaded(uri: str) -> bool:
    try:
        return bool((await status(uri))["loaded"])
    except (OSError, asyncio.TimeoutError, AssertionError):
        return False


async def _from(source: str, text: str):
    """A synthesize through the balancer from client address ``source`` (loopback has them all)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT, local_addr=(source, 0))
    try:
        await async_write_event(Synthesize(text=text).event(), writer)
        while (event := await asyncio.wait_for(async_read_event(reader), 120)).type != "audio-stop":
            assert event.type != "error", event.data
    finally:
        writer.close()


@pytest.mark.timeout(900)
async def test_prometheus_watches_the_scaled_out_servers(gpu_image, haproxy_image, prometheus_image, tiny_model,
                                                          tmp_path):  # fmt: skip
    """examples/scale-out with its Prometheus: both servers behind HAProxy (send-proxy-v2), scraped
    with the example's prometheus.yml (every second here). Prometheus' own API shows both servers'
    request counters and first-audio histograms moving, and the per-address refusals counted by
    the real client addresses: two clients on loopback, one over its share."""
    example = ROOT / "examples/scale-out"
    compose = yaml.safe_load((example / "docker-compose.yml").read_text())["services"]
    scrape = tmp_path / "prometheus.yml"
    scrape.write_text((example / "prometheus.yml").read_text().replace("15s", "1s"))
    with contextlib.ExitStack() as stack:
        for service in ("bark-1", "bark-2"):
            env = {**_example_env(compose[service]["environment"]), "BARK_MAX_CONNECTIONS_PER_ADDRESS": "1"}
            data = hub_data(tmp_path / service, tiny_model, env["BARK_MODEL"])
            stack.enter_context(container(gpu_image, env, {data: "/data"}))
            # Loaded before the requests (the image preloads): their first audio is not a model load.
            await eventually(lambda uri=env["BARK_URI"]: _loaded(uri), timeout=START_TIMEOUT, what="loaded")
        stack.enter_context(container(haproxy_image, compose["balancer"]["environment"],
                                      {example / "haproxy.cfg": "/usr/local/etc/haproxy/haproxy.cfg:ro"}))  # fmt: skip
        stack.enter_context(container(prometheus_image, {}, {scrape: "/etc/prometheus/prometheus.yml:ro",
                                      example / "alerts.yml": "/etc/prometheus/alerts.yml:ro"}))  # fmt: skip
        await eventually(lambda: _query('count(up{job="bark"} == 1)') == 2, timeout=START_TIMEOUT,
                         what="Prometheus scraping both servers")  # fmt: skip
        for n in range(4):
            await _from("127.0.0.2", f"Request {n} here.")
        await eventually(lambda: _query('count(bark_requests_total{outcome="ok"} > 0)') == 2,
                         what="both servers' request counters moving")  # fmt: skip
        await eventually(lambda: _query('sum(bark_requests_total{outcome="ok"})') == 4,
                         what="all four requests counted (the next scrape)")  # fmt: skip
        await eventually(
            lambda: _query("sum(bark_first_audio_seconds_count)") == 4, what="first audio counted"
        )

        # 127.0.0.2 holds three connections (one each, and one over its share), 127.0.0.3 one.
        held = []
        for source in ("127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3"):
            reader, writer = await asyncio.open_connection("127.0.0.1", PORT, local_addr=(source, 0))
            await async_write_event(Describe().event(), writer)
            held.append(((await asyncio.wait_for(async_read_event(reader), 60)).type, writer))
        assert [kind for kind, _ in held] == ["info", "info", "error", "info"], held
        for _, writer in held:
            writer.close()
        await eventually(lambda: _query('sum(bark_connections_refused_total{reason="per_address"})') == 1,
                         what="one refusal, of the client over its share")  # fmt: skip
        assert _query('sum(bark_connections_refused_total{reason="busy"})') == 0


# --- the add-on on aarch64, emulated --------------------------------------------------------

DEBIAN_ARM64 = "bark-test/debian:trixie-arm64"
HA_BASE_ARM64 = "bark-test/ha-base-debian:trixie-arm64"
ARM64_PYTHON = "3.13"  # trixie's
# torch for the emulated aarch64 image: PyPI's aarch64 CPU build. (From 2.10 PyPI's aarch64 wheels
# are CUDA builds; the add-on installs TORCH_VERSION from PyTorch's CPU index, which this machine
# cannot reach.)
ARM64_TORCH = "2.9.1"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
EMULATED_START_TIMEOUT = 900.0
EMULATED_SENTENCE_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def aarch64_emulation(engine) -> None:
    """Runs aarch64 binaries under qemu-user-static: never skipped quietly where it is set up."""
    if not BINFMT.exists():
        pytest.skip(
            "no aarch64 emulation on this machine: install qemu-user-static and binfmt-support and "
            "run update-binfmts --enable qemu-aarch64 (script/docker-engine does it as root)"
        )
    if "enabled" not in BINFMT.read_text():
        pytest.skip("aarch64 emulation is registered but disabled: update-binfmts --enable qemu-aarch64")


@pytest.fixture(scope="module")
def arm64_bases(aarch64_emulation, stand_in_bases, tmp_path_factory) -> None:
    """Debian trixie for arm64, the official voice apps' base (debootstrap runs its second stage
    under emulation), and the Home Assistant base stand-in on it; arm64 images whose binaries run
    under qemu (``uname -m`` says aarch64)."""
    debian_image(DEBIAN_ARM64, tmp_path_factory, "trixie", "arm64")
    machine = docker("run", "--rm", DEBIAN_ARM64, "uname", "-m").stdout.strip()
    assert machine == "aarch64", f"the arm64 stand-in runs as {machine}"
    docker("build", "--network", "host", "--platform", "linux/arm64", "--build-arg", f"BASE={DEBIAN_ARM64}",
           "-t", HA_BASE_ARM64, str(STAND_INS / "ha-base"), timeout=BUILD_TIMEOUT)  # fmt: skip


@pytest.fixture(scope="module")
def arm64_wheelhouse(wheelhouse, tmp_path_factory) -> Path:
    """The wheelhouse for aarch64: its pure wheels, the same versions of the others built for
    aarch64, and torch's aarch64 CPU build."""
    folder = tmp_path_factory.mktemp("wheelhouse-arm64")
    binary = []
    for wheel in wheelhouse.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if wheel.name.endswith("-none-any.whl"):
            shutil.copy(wheel, folder)
        elif name != "torch" and not name.startswith(("nvidia", "cuda", "triton")):
            binary.append(f"{name}=={version}")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", ARM64_PYTHON, "--implementation", "cp",
         "--abi", f"cp{ARM64_PYTHON.replace('.', '')}", "--abi", "abi3", "--abi", "none",
         "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
         "--platform", "manylinux2014_aarch64", "--dest", str(folder), *binary, f"torch=={ARM64_TORCH}"],
        check=True, timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def addon_image_arm64(arm64_bases, arm64_wheelhouse) -> str:
    """The aarch64 app, built the Supervisor's way on trixie, but for one argument: torch is
    ``ARM64_TORCH`` (``TORCH_VERSION``), as the Dockerfile's own pin exists here for aarch64 only
    as a CUDA build."""
    assert "aarch64" in yaml.safe_load((ROOT / "addon/config.yaml").read_text())["arch"]
    with served_to_pip(arm64_wheelhouse) as pip_args:
        return supervisor_build(
            "bark-test/wyoming-bark:addon-arm64", "aarch64", HA_BASE_ARM64, pip_args,
            "--build-arg", f"TORCH_VERSION={ARM64_TORCH}",
        )  # fmt: skip


@pytest.mark.timeout(5400)  # building (once; then cached) and starting under emulation: minutes
@pytest.mark.parametrize("precision", ["auto", "int8"])
async def test_addon_on_aarch64_speaks_under_emulation(addon_image_arm64, tiny_model, tmp_path, precision):
    """The aarch64 add-on, emulated: the real run script with options.json, describe, one sentence,
    health; as shipped (auto) each GPT's precision measured there and logged; int8 gated against
    float32 on aarch64's own kernels (it passes or falls back, never silently wrong); memory after
    the load for both. Emulated times are not speeds."""
    machine = docker("run", "--rm", "--entrypoint", "uname", addon_image_arm64, "-m").stdout.strip()
    assert machine == "aarch64"
    config = yaml.safe_load((ROOT / "addon/config.yaml").read_text())
    data = hub_data(tmp_path, tiny_model, "suno/bark-small")
    (data / "options.json").write_text(json.dumps(config["options"]), encoding="utf-8")
    env = {
        "HF_HUB_OFFLINE": "1",
        "BARK_MAX_SEMANTIC_TOKENS": str(SEMANTIC_TOKENS),
        "BARK_PRECISION": precision,
    }
    with container(addon_image_arm64, env, {data: "/data"}) as name:
        deadline = asyncio.get_running_loop().time() + EMULATED_START_TIMEOUT
        while "Loaded" not in logs(name):  # options preload the model; under qemu, minutes
            assert docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", logs(
                name
            )
            assert asyncio.get_running_loop().time() < deadline, logs(name)[-3000:]
            await asyncio.sleep(2)
        await serving(name)
        # Emulated, a sentence's first audio took 37 s to over a minute (float32 GPTs).
        result = await synthesize(URI, "Hello from a small board.", timeout=EMULATED_SENTENCE_TIMEOUT)
        # Its length: where the random model ends its speech depends on the kernels' rounding
        # (QNNPACK's int8 ended one after 5 of its 20 tokens, unseeded), so speech of a whole number
        # of codec frames, at most the cap; full lengths are checked on x86-64 with seeds.
        assert_stream(result, sentences=1, full_length=False)
        assert 0 < result.samples <= SAMPLES_PER_SENTENCE and result.samples % SAMPLES_PER_FRAME == 0
        state = await status(URI)
        log = logs(name)
        assert state["device"] == "cpu" and state["model"] == "suno/bark-small"
        if precision == "auto":
            chosen = [line for line in log.splitlines() if "Precision by stage, measured here" in line]
            assert chosen, log[-3000:]
            assert state["precision"] in PRECISIONS or state["precision"].startswith("semantic "), state
            print(f"aarch64 (emulated) auto: {chosen[0]}")
        else:
            gate = [
                line for line in log.splitlines() if "int8 quality gate passed" in line or "disagree" in line
            ]
            assert gate, "the int8 gate ran at load"
            # a GPT that disagrees runs in float32, the others in int8
            disagree = [line for line in gate if "disagree" in line]
            assert ("fp32" in state["precision"]) if disagree else (state["precision"] == "int8"), state
            probes = [line for line in log.splitlines() if "int8 kernels do not run" in line]
            print(f"aarch64 (emulated) int8: {' | '.join(probes + gate)}")
        memory = re.search(r"Loaded .* \(peak memory (\d+) MiB\)", log)
        assert memory, log[-3000:]
        print(
            f"aarch64 (emulated) {precision}: peak memory after the tiny model's load {memory.group(1)} MiB"
        )
        assert "healthy: bark" in health_check(addon_image_arm64, name)
