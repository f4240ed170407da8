"""How a setting is declared: a dataclass field whose metadata (``setting(...)``) says its help,
its kind and range, and its flag, from which the command line, the environment, the ``--config``
file's keys and the add-on's schema are all derived (``cli.py``, ``config.py``). Torch-free, so
``--help`` and the health check start in a moment.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# --- converters: a string (flag, environment, file value as text) to the setting's value -------


def ascii_number(value: str) -> str:
    """Python reads ``١٠٠`` (Arabic-Indic digits) as 100; a setting takes ASCII digits only."""
    if not value.isascii():
        raise argparse.ArgumentTypeError(f"must be written with ASCII digits, got {value!r}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def parse(value: str) -> int:
        number = int(ascii_number(value))
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {value}")
        return number

    parse.__name__ = "integer"  # argparse's "invalid integer value"
    return parse


def number_in(low: float, high: float, above_low: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (or (low, high] with ``above_low``)."""

    def parse(value: str) -> float:
        number = float(ascii_number(value))
        if not (math.isfinite(number) and (low < number if above_low else low <= number) and number <= high):
            bounds = f"({low}, {high}]" if above_low else f"[{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be a number in {bounds}, got {value}")
        return number

    parse.__name__ = "number"
    return parse


def folder(value: str) -> Path:
    """A folder; ``~`` and ``~user`` expanded now, so a user that does not exist is a message,
    not a traceback at start."""
    try:
        return Path(value).expanduser()
    except RuntimeError as err:  # ~nosuchuser
        raise argparse.ArgumentTypeError(f"cannot expand {value!r}: {err}") from err


def uri(value: str) -> str:
    """tcp://HOST:PORT (a port from 0, any free one, to 65535), unix://PATH or stdio://."""
    parsed = urlparse(value)
    if parsed.scheme not in ("tcp", "unix", "stdio"):
        raise argparse.ArgumentTypeError(f"use tcp://HOST:PORT, unix://PATH or stdio://, got {value!r}")
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            port = None
        if port is None or not 0 <= port <= 65_535:
            raise argparse.ArgumentTypeError(
                f"a tcp:// address needs a port from 0 (any free one) to 65535, got {value!r}"
            )
        if not parsed.hostname:
            raise argparse.ArgumentTypeError(f"a tcp:// address needs a host (0.0.0.0: all), got {value!r}")
    if parsed.scheme == "unix" and not (parsed.netloc + parsed.path):
        raise argparse.ArgumentTypeError(f"a unix:// address needs a path, got {value!r}")
    return value


def log_format(value: str) -> str:
    """A logging format that can format a record (checked now, not at the first log line)."""
    try:
        logging.Formatter(value).format(logging.makeLogRecord({"msg": "check"}))
    except (ValueError, KeyError, TypeError) as err:
        raise argparse.ArgumentTypeError(f"not a usable logging format ({err!r})") from err
    return value


def networks(value: str) -> tuple:
    """``127.0.0.0/8,::1`` -> the networks (``ipaddress``), each address a network of its own."""
    import ipaddress

    try:
        return tuple(
            ipaddress.ip_network(item.strip(), strict=False) for item in value.split(",") if item.strip()
        )
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected addresses or networks (CIDR), comma-separated: {err}"
        ) from err


def language_voices(value: str) -> dict[str, str]:
    """``de=v2/de_speaker_3,fr=grandpa`` -> {"de": "v2/de_speaker_3", "fr": "grandpa"}."""
    pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected LANG=VOICE[,LANG=VOICE...], got {value!r}")
    return {language.strip(): voice.strip() for language, voice in pairs}


# --- the declaration ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What the command line, environment, file and add-on need to know of one setting."""

    help: str
    flag: str = ""  # default: the field's name, with dashes
    kind: str = "str"  # str | int | number | switch | choice | name-or-switch | file-only
    low: float = 0
    high: float = 0
    above_low: bool = False  # a number strictly above ``low``
    choices: tuple[str, ...] = ()
    auto: bool = False  # the word "auto" (None: the program's choice) is also a value
    parse: Callable[[str], Any] | None = None  # a str setting's own check
    start: str | Callable[[], str] | None = None  # the command line's default, where not the field's
    invert: bool = False  # a switch that turns the setting off (--no-streaming)

    def convert(self) -> Callable[[str], Any] | None:
        """The argparse type of the flag (None: the string as given)."""
        if self.kind == "int":
            plain = int_in(int(self.low), int(self.high))
        elif self.kind == "number":
            plain = number_in(self.low, self.high, self.above_low)
        else:
            return self.parse
        if not self.auto:
            return plain

        def auto_or(value: str) -> Any:
            return None if value == "auto" else plain(value)

        auto_or.__name__ = plain.__name__
        return auto_or

    def json_types(self) -> Any:
        """What the ``--config`` file may hold for it: allowed values, or JSON types."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "switch":
            return bool
        if self.kind == "name-or-switch":
            return (str, bool)
        if self.kind == "file-only":
            return dict
        base = {"int": int, "number": (int, float)}.get(self.kind, str)
        return (int, str) if self.auto else base


def setting(default: Any = dataclasses.MISSING, help: str = "", **spec: Any) -> Any:
    """A settings field with its one declaration (see ``Spec``)."""
    metadata = {"setting": Spec(help=help, **spec)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def nested(cls: type, required: bool = False) -> Any:
    """A field holding a group of settings."""
    if required:
        return field(metadata={"group": cls})
    return field(default_factory=cls, metadata={"group": cls})


@dataclass(frozen=True)
class Declared:
    """One declared setting, found in the tree: its field, its spec and its flag's name."""

    field: dataclasses.Field
    spec: Spec

    @property
    def flag(self) -> str:
        return self.spec.flag or self.field.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The argparse destination, and the ``--config`` file's key."""
        return self.flag.replace("-", "_")

    def start(self) -> str | None:
        """The command line's default, as text (argparse converts it like a given value)."""
        start = self.spec.start
        if start is not None:
            return start() if callable(start) else start
        default = self.field.default
        if default is None and self.spec.auto:
            return "auto"
        if default is dataclasses.MISSING or default is None or self.spec.kind == "switch":
            return None
        return f"{default:g}" if isinstance(default, float) else str(default)


def declared(cls: type) -> Iterator[Declared]:
    """Every setting declared in ``cls`` and its groups, in declaration order."""
    for item in dataclasses.fields(cls):
        if "group" in item.metadata:
            yield from declared(item.metadata["group"])
        elif "setting" in item.metadata:
            yield Declared(item, item.metadata["setting"])


def build(cls: type, values: Any) -> Any:
    """``cls`` made from ``values`` (a namespace with each setting's dest), groups included."""
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if "group" in item.metadata:
            kwargs[item.name] = build(item.metadata["group"], values)
        elif "setting" in item.metadata:
            one = Declared(item, item.metadata["setting"])
            value = getattr(values, one.dest)
            kwargs[item.name] = (not value) if one.spec.invert else value
    return cls(**kwargs)
