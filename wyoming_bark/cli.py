"""The command line, derived from the settings' declarations (``settings.py``): each setting's
flag, its ``BARK_*`` environment variable, its check and its default.

Flags beat the environment, which beats the ``--config`` file, which beats the defaults; the
file's keys and types are derived from the same declarations (``config.flag_keys``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .config import ConfigError, flag_keys, load_config
from .discovery import default_service_name
from .options import Declared, declared
from .settings import Settings

ENV_PREFIX = "BARK_"
DEFAULT_ZEROCONF_NAME = default_service_name()


def env_name(flag: str) -> str:
    """``--data-dir`` is read from ``BARK_DATA_DIR``."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(env_name(flag), default)


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def _env_bool(flag: str) -> bool:
    value = (_env(flag) or "").strip().lower()
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise ConfigError(
            f"{env_name(flag)} must be one of 1/true/yes/on or 0/false/no/off, got {_env(flag)!r}"
        )
    return value in TRUE_WORDS


def _zeroconf_env() -> str | None:
    """``BARK_ZEROCONF``: a service name, or 1/true for the default one, or 0/false/empty for off."""
    value = (_env("zeroconf") or "").strip()
    if value.lower() in FALSE_WORDS:
        return None
    return DEFAULT_ZEROCONF_NAME if value.lower() in TRUE_WORDS else value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless its help already says it, or it has none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, "", False, {}):
            return text
        return super()._get_help_string(action)


def _add(parser: argparse.ArgumentParser, one: Declared, file_values: dict[str, Any]) -> None:
    """One declared setting as a flag, its default taken from the environment, else the file,
    else the declaration."""
    spec, flag, key = one.spec, one.flag, one.dest
    if spec.kind == "file-only":
        parser.set_defaults(**{key: file_values.get(key, one.field.default_factory())})
        return
    if spec.kind == "switch":
        default = _env_bool(flag) if _env(flag) is not None else bool(file_values.get(key, False))
        parser.add_argument(
            f"--{flag}", action="store_true", default=default, help=f"{spec.help} (env {env_name(flag)}=1)"
        )
        return
    if spec.kind == "name-or-switch":  # --zeroconf [NAME]
        parser.add_argument(
            f"--{flag}",
            nargs="?",
            const=DEFAULT_ZEROCONF_NAME,
            default=_zeroconf_env() if _env(flag) is not None else file_values.get(key),
            metavar="NAME",
            help=f"{spec.help} (NAME defaults to {DEFAULT_ZEROCONF_NAME}, with -PORT added when the "
            f"port is not 10200; env {env_name(flag)}=NAME or 1)",
        )
        return
    convert = spec.convert()
    default = one.start()
    if key in file_values:
        default = file_values[key]
        if convert is not None:
            try:
                convert(str(default))
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise ConfigError(f"config key tts.bark.{key}: {err}") from err
    parser.add_argument(
        f"--{flag}",
        default=_env(flag, default),
        type=convert,
        choices=spec.choices or None,
        help=f"{spec.help} (env {env_name(flag)})",
    )


SERVER = "Wyoming text-to-speech server for Bark. Every flag can also be set as BARK_<FLAG>."


def build_parser(
    file_values: dict[str, Any] | None = None, prog: str = "wyoming-bark", description: str = SERVER
) -> argparse.ArgumentParser:
    """The command line; ``file_values`` (from --config) replace the built-in defaults only."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    parser.add_argument(
        "--config", metavar="FILE", default=_env("config"), help="JSON configuration file (env BARK_CONFIG)"
    )
    for one in declared(Settings):
        _add(parser, one, file_values or {})
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def parse_args(
    argv: list[str] | None = None,
    prog: str = "wyoming-bark",
    description: str = SERVER,
    extend: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Flags over environment over --config file over defaults; ``extend`` adds a command's own
    arguments (``wyoming-bark-clone``) to the server's."""
    early = argparse.ArgumentParser(prog=prog, add_help=False)
    early.add_argument("--config", default=_env("config"))
    config_path = early.parse_known_args(argv)[0].config
    file_values: dict[str, Any] = {}
    warnings: list[str] = []
    try:
        if config_path:
            file_values, warnings = load_config(Path(config_path).expanduser(), flag_keys())
        parser = build_parser(file_values, prog, description)
        if extend is not None:
            extend(parser)
    except ConfigError as err:
        early.error(str(err))
    args = parser.parse_args(argv)
    for action in parser._actions:  # argparse checks choices on the command line only
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            parser.error(
                f"argument {action.option_strings[0]} (or {env_name(action.option_strings[0][2:])}, "
                f"or the config file): invalid choice {value!r} (choose from {', '.join(action.choices)})"
            )
    args.config_warnings = warnings
    return args
