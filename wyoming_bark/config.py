"""The JSON configuration file (``--config``): the design's ``tts.bark`` keys and our own.

Precedence is flags > environment > file > defaults: values from the file only replace the
built-in defaults of the command line. Unknown keys and wrong types stop the server with a
message naming the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .discovery import default_service_name
from .options import declared
from .settings import MAX_SEED, Settings

MODEL_SIZES = {"small": "suno/bark-small", "full": "suno/bark"}
# Keys of the original design, and keys whose file form differs from their flag's; every other key
# is a declared setting's flag, with the types its declaration gives (see ``flag_keys``).
FILE_ONLY: dict[str, Any] = {
    "use_small_model": bool,
    "model_size": tuple(MODEL_SIZES),
    "use_cache": bool,
    "np_load_scale": (int, float),
    "language_voices": dict,
    "streaming": bool,
    "zeroconf": (str, bool),
}


def flag_keys() -> dict[str, Any]:
    """Every key a file may hold, with its JSON type(s) or allowed values: each declared
    setting's (``Spec.json_types``, by its flag's name), and ``FILE_ONLY``."""
    keys = {one.dest: one.spec.json_types() for one in declared(Settings)}
    return {**keys, **FILE_ONLY}


MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: with a key twice, which one was meant?"""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(f"key {key!r} appears twice")
        seen[key] = value
    return seen


def _check(path: Path, key: str, value: Any, keys: dict[str, Any]) -> None:
    expected = keys.get(key)
    if expected is None:
        raise ConfigError(f"{path}: unknown key tts.bark.{key} (known: {', '.join(sorted(keys))})")
    if isinstance(expected, tuple) and all(isinstance(item, str) for item in expected):
        if value not in expected:
            raise ConfigError(f"{path}: tts.bark.{key} must be one of {', '.join(expected)}, got {value!r}")
        return
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{path}: tts.bark.{key} must be {names}, got {value!r}")


def load_config(path: Path, keys: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Flag values (by argparse dest) from ``path``, checked against ``keys`` (see ``flag_keys``),
    and warnings to log."""
    try:
        if not path.is_file():  # a FIFO or a device such as /dev/zero would never end
            raise ConfigError(f"config file {path} is not a regular file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES // 1024} KiB")
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") if "appears twice" in str(err) else err
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    except RecursionError as err:  # json nests by recursion
        raise ConfigError(f"{path} is nested too deeply to be a configuration") from err
    section = (
        data.get("tts", {}).get("bark")
        if isinstance(data, dict) and isinstance(data.get("tts"), dict)
        else None
    )
    if not isinstance(section, dict):
        raise ConfigError(f'{path}: expected {{"tts": {{"bark": {{...}}}}}}')
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in section.items():
        _check(path, key, value, keys)
        if key == "np_load_scale":
            warnings.append(f"{path}: tts.bark.np_load_scale has no meaning for this server and is ignored")
        elif key == "use_small_model":
            values.setdefault("model", MODEL_SIZES["small" if value else "full"])
        elif key == "model_size":
            values.setdefault("model", MODEL_SIZES[value])
        elif key == "use_cache":
            values["cache"] = value
        elif key == "streaming":
            values["no_streaming"] = not value
        elif key == "voice_seeds":
            if not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in value.items()
            ):
                raise ConfigError(f"{path}: tts.bark.voice_seeds must map voice names to integers")
            if not all(0 <= seed <= MAX_SEED for seed in value.values()):
                raise ConfigError(f"{path}: tts.bark.voice_seeds: each seed must be from 0 to {MAX_SEED}")
            values[key] = value
        elif key == "language_voices":
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ConfigError(f"{path}: tts.bark.language_voices must map languages to voice names")
            if any(mark in item for pair in value.items() for item in pair for mark in ",="):
                raise ConfigError(
                    f"{path}: tts.bark.language_voices: no ',' or '=' in a language or voice name"
                )
            values[key] = ",".join(f"{k}={v}" for k, v in value.items())
        elif key == "zeroconf" and isinstance(value, bool):
            values[key] = default_service_name() if value else None
        else:
            values[key] = value
    if "model" in section:  # an explicit model wins over model_size / use_small_model
        values["model"] = section["model"]
    return values, warnings
