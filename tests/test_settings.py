"""The settings tree: every flag reaches it, each default is defined once, and nothing is passed
by position."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
from yaml import safe_load

from wyoming_bark.cli import build_parser
from wyoming_bark.fast import SamplingSettings
from wyoming_bark.settings import (
    EngineSettings,
    GenerationSettings,
    ModelSettings,
    ServerSettings,
    Settings,
)

ROOT = Path(__file__).resolve().parent.parent
NOT_SETTINGS = {"help", "version", "config"}  # what the command line itself acts on


class _Recording(argparse.Namespace):
    """A namespace that notes which attributes were read."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(**vars(args))
        object.__setattr__(self, "read", set())

    def __getattribute__(self, name: str):
        if not name.startswith("_") and name != "read":
            object.__getattribute__(self, "read").add(name)
        return object.__getattribute__(self, name)


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for name in [name for name in os.environ if name.startswith("BARK_")]:
        monkeypatch.delenv(name)


def _dests() -> set[str]:
    return {action.dest for action in build_parser()._actions} - NOT_SETTINGS


def test_every_flag_reaches_the_settings(clean_env, tmp_path):
    args = _Recording(build_parser().parse_args(["--data-dir", str(tmp_path)]))
    Settings.from_args(args)
    unread = _dests() - args.read
    assert not unread, f"flags that reach no setting: {sorted(unread)}"


def test_defaults_are_the_settings_own(clean_env, tmp_path):
    """The command line's defaults come from the settings classes: parsing nothing gives them."""
    settings = Settings.from_args(build_parser().parse_args(["--data-dir", str(tmp_path)]))
    model = ModelSettings(data_dir=tmp_path)
    assert settings.engine.model == model
    assert settings.engine.generation == GenerationSettings()
    assert settings.engine.generation.sampling == SamplingSettings()
    assert dataclasses.replace(settings.engine, model=model, voices_dir=None) == EngineSettings(model=model)
    assert settings.engine.voices_dir == tmp_path / "voices", "custom voices default into the data dir"
    assert settings.server == ServerSettings()


def test_settings_are_frozen_and_keyword_only(tmp_path):
    model = ModelSettings(data_dir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.device = "cuda"  # type: ignore[misc]
    for cls in (ModelSettings, GenerationSettings, EngineSettings, ServerSettings, Settings):
        with pytest.raises(TypeError):
            cls("positional")  # a swapped string is an error, not a silent mix-up


def test_every_addon_option_reaches_a_setting(clean_env, tmp_path):
    """The add-on's run script passes each option as a flag: that flag must reach the settings."""
    run = (ROOT / "addon/rootfs/etc/s6-overlay/s6-rc.d/bark/run").read_text()
    passed = set(re.search(r"for option in ([\w ]+); do", run).group(1).split())
    args = _Recording(build_parser().parse_args(["--data-dir", str(tmp_path)]))
    Settings.from_args(args)
    schema = safe_load((ROOT / "addon/config.yaml").read_text())["schema"]
    for option in schema:
        if option in passed:
            assert option in args.read, f"add-on option {option} reaches no setting"
        else:  # switches and fixed flags, spelled out in the script
            flag = {"model": "--model", "streaming": "--no-streaming", "metrics": "--metrics-port"}.get(
                option, f"--{option}"
            )
            assert flag in run, f"add-on option {option} is not passed to the server"
            assert flag.removeprefix("--").replace("-", "_") in args.read


def test_the_addon_schema_fits_each_settings_declaration():
    """The add-on's option check is the setting's own: the same kind, a range within its range,
    and the same default voice."""
    from wyoming_bark.options import declared
    from wyoming_bark.settings import DEFAULT_VOICE

    config = safe_load((ROOT / "addon/config.yaml").read_text())
    specs = {one.dest: one.spec for one in declared(Settings)}
    specs["streaming"] = specs["no_streaming"]  # the add-on says it the positive way
    checked = 0
    for option, kind in config["schema"].items():
        found = re.fullmatch(r"(int|float)\(([\d.]*),([\d.]*)\)\??", kind)
        spec = specs.get(option)
        if option == "metrics":  # a switch for a fixed port, the one the app maps
            assert kind == "bool" and specs["metrics_port"].low <= 9464 <= specs["metrics_port"].high
            assert "9464/tcp" in config["ports"]
        elif kind == "bool":
            assert spec is not None and spec.kind in ("switch", "name-or-switch"), option
        elif found:
            assert spec.kind in {"int": ("int", "number"), "float": ("number",)}[found[1]], option
            low, high = (float(found[2]) if found[2] else None), (float(found[3]) if found[3] else None)
            assert low is not None and low >= spec.low, f"{option}: the add-on takes less than the server"
            assert high is None or high <= spec.high, f"{option}: the add-on takes more than the server"
        else:
            continue
        checked += 1
    assert checked >= 10, "the add-on's numbers and switches are checked"
    assert config["options"]["voice"] == DEFAULT_VOICE
