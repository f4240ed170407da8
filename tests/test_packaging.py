"""The Home Assistant add-on and the Docker images, checked offline (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml
from helpers import dockerfile_args

from wyoming_bark import __version__
from wyoming_bark.cli import build_parser, env_name

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon"
S6 = ADDON / "rootfs/etc/s6-overlay/s6-rc.d"

# The current Supervisor's app schema (supervisor/apps/validate.py, 2026): the keys it knows, the
# ones it warns about as deprecated, the architectures it still supports, the map types it mounts.
APP_KEYS = {
    "name", "version", "slug", "description", "arch", "machine", "url", "startup", "boot", "init",
    "stage", "ports", "ports_description", "watchdog", "webui", "ingress", "ingress_port",
    "ingress_entry", "ingress_stream", "panel_icon", "panel_title", "panel_admin", "homeassistant",
    "host_network", "host_pid", "host_ipc", "host_uts", "host_dbus", "devices", "udev", "tmpfs", "map",
    "environment", "privileged", "apparmor", "full_access", "audio", "video", "gpio", "usb", "uart",
    "devicetree", "kernel_modules", "realtime", "hassio_api", "hassio_role", "homeassistant_api",
    "stdin", "legacy", "docker_api", "auth_api", "services", "discovery", "backup_exclude",
    "backup_pre", "backup_post", "backup", "options", "schema", "image", "ulimits", "timeout",
    "journald", "breaking_versions",
}  # fmt: skip
DEPRECATED_KEYS = {"advanced", "codenotary", "auto_uart", "snapshot", "snapshot_exclude", "snapshot_pre",
                   "snapshot_post"}  # fmt: skip
MAP_TYPES = {"data", "config", "ssl", "addons", "backup", "share", "media", "homeassistant_config",
             "all_addon_configs", "addon_config"}  # fmt: skip
ARCHES = {"aarch64", "amd64"}  # armhf, armv7 and i386 are deprecated
REQUIRED = {"name", "version", "slug", "description", "arch"}
# Supervisor defaults: restating them is noise that the add-on linter rejects.
DEFAULTS = {
    "boot": "auto",
    "startup": "application",
    "host_network": False,
    "hassio_api": False,
    "homeassistant_api": False,
    "ingress": False,
    "stdin": False,
    "full_access": False,
    "apparmor": True,
    "auth_api": False,
    "stage": "stable",
    "timeout": 10,
    "tmpfs": False,
    "audio": False,
    "video": False,
    "gpio": False,
    "usb": False,
    "uart": False,
    "udev": False,
    "realtime": False,
    "journald": False,
    "legacy": False,
    "panel_admin": True,
    "kernel_modules": False,
    "devicetree": False,
}
SCHEMA_TYPE = re.compile(
    r"^(?:str|bool|email|url|port|password|device"
    r"|int(?:\((?P<imin>-?\d+)?,(?P<imax>-?\d+)?\))?"
    r"|float(?:\((?P<fmin>-?[\d.]+)?,(?P<fmax>-?[\d.]+)?\))?"
    r"|match\(.+\)"
    r"|list\((?P<choices>[^|()]+(?:\|[^|()]+)*)\))\??$"
)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def config() -> dict:
    return load(ADDON / "config.yaml")


def check_value(key: str, value, schema: str) -> None:
    match = SCHEMA_TYPE.match(schema)
    assert match, f"{key}: unknown schema type {schema!r}"
    kind = schema.rstrip("?").split("(")[0]
    if kind == "bool":
        assert isinstance(value, bool), f"{key}: {value!r} is not a bool"
    elif kind == "int":
        assert isinstance(value, int) and not isinstance(value, bool), f"{key}: {value!r} is not an int"
        low, high = match.group("imin"), match.group("imax")
        assert (low is None or value >= int(low)) and (high is None or value <= int(high)), (
            f"{key} out of range"
        )
    elif kind == "float":
        assert isinstance(value, (int, float)), f"{key}: {value!r} is not a number"
    elif kind == "list":
        assert value in match.group("choices").split("|"), f"{key}: {value!r} not in {schema}"
    else:
        assert isinstance(value, str), f"{key}: {value!r} is not a string"


def test_config_follows_supervisor_rules(config):
    assert REQUIRED <= set(config), f"missing {REQUIRED - set(config)}"
    assert re.fullmatch(r"[a-z0-9_]+", config["slug"]) and config["slug"] == "bark"
    assert set(config["arch"]) <= ARCHES and {"amd64", "aarch64"} <= set(config["arch"])
    assert str(config["version"]) == __version__, "add-on version = package version"
    restated = {key for key, default in DEFAULTS.items() if key in config and config[key] == default}
    assert not restated, f"keys restated at their default: {restated}"
    assert config["init"] is False, "s6-overlay is the init"
    assert config["discovery"] == ["wyoming"]
    assert config["ports"] == {"10200/tcp": None, "9464/tcp": None}, (
        "Wyoming as the official apps (HA reaches it inside), metrics unmapped until the user maps them"
    )
    assert set(config["ports_description"]) == set(config["ports"])
    assert config["backup_exclude"], "models must stay out of backups"
    assert set(config) <= APP_KEYS, f"keys the Supervisor does not know: {set(config) - APP_KEYS}"
    assert not set(config) & DEPRECATED_KEYS, "no deprecated keys"
    assert {entry["type"] for entry in config["map"]} <= MAP_TYPES
    assert {"type": "addon_config", "read_only": True} in config["map"], "custom voices: the app's folder"
    assert {"type": "share", "read_only": True} in config["map"], "and, as before, /share/bark/voices"


def test_the_app_looks_like_one():
    """The store shows icon.png (128x128) and logo.png, as the official apps have them
    (drawn by script/app-images)."""
    for name, size in (("icon.png", (128, 128)), ("logo.png", None)):
        raw = (ADDON / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR", f"{name} is a PNG"
        width, height = struct.unpack(">II", raw[16:24])
        assert size is None or (width, height) == size, f"{name} is {width}x{height}"
        assert 64 <= min(width, height) and max(width, height) <= 1024


def test_texts_say_app_and_settings_apps():
    """Add-ons are apps since Home Assistant 2026.2 (Settings → Apps); the old name once, in brackets."""
    for path in (ROOT / "README.md", ADDON / "DOCS.md", ADDON / "README.md"):
        text = path.read_text(encoding="utf-8")
        assert "Settings → Apps" in text or path.name == "README.md" and path.parent == ADDON, path
        old_menu = text.count("Settings → Add-ons")
        assert old_menu == len(re.findall(r"\([^)]*Settings → Add-ons[^)]*\)", text)) <= 1, (
            f"{path}: the menu is Settings → Apps now (the old name once, in brackets)"
        )
        assert len(re.findall(r"\badd-on\b", text, re.IGNORECASE)) <= 2, f"{path} still says add-on"


def test_options_match_schema(config):
    options, schema = config["options"], config["schema"]
    required = {key for key, kind in schema.items() if not str(kind).endswith("?")}
    assert set(options) <= set(schema), f"options without schema: {set(options) - set(schema)}"
    assert required <= set(options), f"required schema entries without options: {required - set(options)}"
    for key, kind in schema.items():
        assert SCHEMA_TYPE.match(str(kind)), f"{key}: bad schema {kind!r}"
        if key in options:
            check_value(key, options[key], str(kind))
    assert schema["voice"] == "str", "free text, so custom voices can be chosen"
    assert {"model", "voice", "streaming", "debug"} <= set(schema)
    assert "device" not in schema, "an add-on cannot reach a GPU: no device choice to get wrong"


def test_schema_checker_rejects_bad_options():
    with pytest.raises(AssertionError):
        check_value("model", "huge", "list(small|full)")
    with pytest.raises(AssertionError):
        check_value("seed", -1, "int(0,)?")
    with pytest.raises(AssertionError):
        check_value("debug", "yes", "bool")
    with pytest.raises(AssertionError):
        check_value("x", 1, "integer")


def test_the_app_builds_without_a_build_file_on_the_trixie_base(config):
    """The Supervisor (2026.04 on) warns on every build that has a build.yaml and then passes no
    BUILD_FROM: the Dockerfile names the base per BUILD_ARCH, Home Assistant's Debian trixie."""
    assert not list(ADDON.glob("build.*")), "build.yaml is deprecated: its settings live in the Dockerfile"
    args = dockerfile_args(ADDON / "Dockerfile")
    assert args["BUILD_FROM"] == "ghcr.io/home-assistant/${BUILD_ARCH}-base-debian:trixie"
    assert args["BUILD_ARCH"] in config["arch"] and set(config["arch"]) == {"amd64", "aarch64"}
    assert args["WYOMING_BARK_VERSION"] == __version__ == str(config["version"])


def test_translations_changelog(config):
    translated = load(ADDON / "translations/en.yaml")["configuration"]
    assert set(translated) == set(config["schema"]), "every option is explained"
    assert f"## {__version__}" in (ADDON / "CHANGELOG.md").read_text(encoding="utf-8")
    docs = (ADDON / "DOCS.md").read_text(encoding="utf-8")
    assert "/share/bark/voices" in docs and "GPU" in docs and "GB" in docs


def test_voices_from_recordings_documented_for_the_app(config):
    """Recordings go where the app reads voices, the DOCS walk through it, and both texts ask for
    the speaker's consent; the models it downloads stay out of backups."""
    docs, readme = (
        (ADDON / "DOCS.md").read_text(encoding="utf-8"),
        (ROOT / "README.md").read_text(encoding="utf-8"),
    )
    for text in (docs, readme):
        assert "agreed" in text and ("NAME.wav" in text or "oma.wav" in text)
    steps = docs[docs.index("### Your own voice from a recording") :]
    for step in ("Record about 10 seconds", "addon_configs/<id>_bark/voices/", "Wait for the log line",
                 "Made voice", "Choose the voice"):  # fmt: skip
        assert step in steps, step
    run = (S6 / "bark/run").read_text()
    assert "voices=/config/voices" in run and '--voices-dir="${voices}"' in run
    assert {"type": "addon_config", "read_only": True} in config["map"]  # read only: made voices go to /data
    assert "models/**" in config["backup_exclude"]  # HuBERT and the quantizer are downloaded there
    assert "int8-cache/**" in config["backup_exclude"] and "voices-made/**" not in config["backup_exclude"]


def test_s6_services():
    assert (S6 / "bark/type").read_text().strip() == "longrun"
    assert (S6 / "discovery/type").read_text().strip() == "oneshot"
    assert {p.name for p in (S6 / "user/contents.d").iterdir()} == {"bark", "discovery"}
    assert (S6 / "discovery/dependencies.d/bark").exists()
    for script in ("bark/run", "bark/finish", "discovery/run"):
        assert os.access(S6 / script, os.X_OK), f"{script} is not executable"
    run = (S6 / "bark/run").read_text()
    assert "exec python3 -m wyoming_bark" in run and "--data-dir=/data" in run
    assert '--voice="$(' in run, "--voice=VALUE: a voice starting with '-' is a value, not a flag"
    passed_as_flags = re.search(r"for option in ([\w ]+); do", run).group(1).split()
    flags = {action.dest for action in build_parser()._actions}
    for option in load(ADDON / "config.yaml")["schema"]:
        assert f"'{option}'" in run or option in passed_as_flags, (
            f"option {option} is not passed to the server"
        )
        if option in passed_as_flags:
            assert option in flags, (
                f"option {option} is passed as --{option.replace('_', '-')}, which is no flag"
            )
    discovery = (S6 / "discovery/run").read_text()
    assert 'bashio::discovery "wyoming"' in discovery and "tcp://$(hostname):10200" in discovery


def test_one_torch_version():
    """Tests, the add-on and the GPU image run the same torch: the one the test suite pins."""
    pinned = re.search(r'TORCH_VERSION="\$\{TORCH_VERSION:-([\d.]+)\}"', (ROOT / "script/test").read_text())
    assert pinned, "script/test pins torch"
    image = re.search(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    addon = dockerfile_args(ADDON / "Dockerfile")["TORCH_VERSION"]
    assert image and image.group(1) == str(addon) == pinned.group(1)


def test_gpu_image_and_compose():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim-\w+$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["python", "-m", "wyoming_bark"]' in dockerfile
    assert not re.search(r"^CMD", dockerfile, re.MULTILINE), "a flag in CMD would override BARK_* variables"
    assert "EXPOSE 10200" in dockerfile and 'VOLUME ["/data"]' in dockerfile
    assert re.search(r"^USER 1000", dockerfile, re.MULTILINE), "non-root"
    assert "wyoming_bark.health" in dockerfile and "BARK_ZEROCONF=1" in dockerfile
    assert dockerfile.index("pip install -r") < dockerfile.index("COPY wyoming_bark"), (
        "torch and the dependencies in a layer before the code: a code change must not download them again"
    )
    compose = load(ROOT / "docker-compose.yml")["services"]["bark"]
    devices = compose["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert compose["network_mode"] == "host"
    assert any(volume.endswith(":/data") for volume in compose["volumes"])
    assert any(":/voices" in volume for volume in compose["volumes"])
    flags = {
        env_name(action.option_strings[0][2:]) for action in build_parser()._actions if action.option_strings
    }
    assert set(compose["environment"]) <= flags, "every variable in the compose file is a server setting"


def test_scale_out_example_is_consistent():
    """examples/scale-out: each server is a backend of the balancer, one alone announces (the
    balancer's port), the balancer says who each client is (PROXY v2, no raised per-address cap),
    and Prometheus scrapes every server's metrics port."""
    example = ROOT / "examples/scale-out"
    services = load(example / "docker-compose.yml")["services"]
    config = (example / "haproxy.cfg").read_text()
    balancer = services.pop("balancer")
    prometheus = services.pop("prometheus")
    scraped = load(example / "prometheus.yml")["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(scraped) == sorted(
        f"127.0.0.1:{s['environment']['BARK_METRICS_PORT']}" for s in services.values()
    )
    assert prometheus["network_mode"] == "host"
    rules = load(example / "alerts.yml")["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == {
        "BarkModelFailedToLoad",
        "BarkFirstAudioSlow",
        "BarkRefusingConnections",
    }
    assert (
        balancer["network_mode"] == "host" and "/usr/local/etc/haproxy/haproxy.cfg" in balancer["volumes"][0]
    )
    assert re.search(r"^\s+bind :10200$", config, re.MULTILINE) and "balance leastconn" in config
    flags = {env_name(a.option_strings[0][2:]) for a in build_parser()._actions if a.option_strings}
    backends = set(re.findall(r'server \w+ "\$\{(\w+)\}" check', config))
    assert backends == set(balancer["environment"]), "every server line has its address"
    uris = {service["environment"]["BARK_URI"] for service in services.values()}
    assert {f"tcp://{balancer['environment'][name]}" for name in backends} == uris
    announcing = [s for s in services.values() if s["environment"].get("BARK_ZEROCONF")]
    assert len(announcing) == 1 and announcing[0]["environment"]["BARK_ZEROCONF_PORT"] == 10200
    for service in services.values():
        assert set(service["environment"]) <= flags
        assert "BARK_MAX_CONNECTIONS_PER_ADDRESS" not in service["environment"], "no raised cap: PROXY v2"
        assert service["environment"]["BARK_PROXY_PROTOCOL"] == 1
        assert service["network_mode"] == "host"
    assert re.search(r"^\s+default-server .*send-proxy-v2 check-send-proxy", config, re.MULTILINE)
    devices = [
        s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in services.values()
    ]
    assert sorted(d for ids in devices for d in ids) == [str(n) for n in range(len(services))], "a GPU each"
    check = re.search(r"tcp-check send-binary (\w+)", config).group(1)
    assert json.loads(bytes.fromhex(check)) == {"type": "bark-status"}, "the health check asks bark-status"


def test_dockerfiles_and_scripts_pass_linters():
    scripts_dir = sysconfig.get_path("scripts")  # the venv's bin/, even when it is not on PATH
    hadolint, shellcheck = (
        shutil.which(tool, path=f"{scripts_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        for tool in ("hadolint", "shellcheck")
    )
    assert hadolint and shellcheck, "install the test extras: pip install -e '.[test]'"
    lint = subprocess.run(
        [hadolint, ROOT / "Dockerfile", ADDON / "Dockerfile"], check=False, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    shell = [
        path for path in (ROOT / "script").iterdir() if "python" not in path.read_text().split("\n", 1)[0]
    ]
    scripts = [S6 / "bark/run", S6 / "bark/finish", S6 / "discovery/run", *shell]
    check = subprocess.run(
        [shellcheck, *scripts, ROOT / ".ci/run"], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
