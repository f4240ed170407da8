"""Bark voices: the built-in presets of the model repo and custom ``.npz`` prompts.

A voice is a Bark *history prompt*: ``semantic_prompt`` (1-D), ``coarse_prompt`` (2 x N) and
``fine_prompt`` (8 x N) token arrays. Built-in ones live in the model repo's
``speaker_embeddings/`` folder, indexed by ``speaker_embeddings_path.json`` (the layout
``BarkProcessor.save_pretrained`` writes and the ``suno/bark*`` hub repos carry); custom ones
are single ``NAME.npz`` files in the voices directory.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from .errors import UnknownVoice, VoiceError, quoted
from .prompts import EMBEDDINGS_INDEX, MAX_VOICE_FILE_BYTES, Prompt, VoiceGone, load_builtin, load_npz
from .userfiles import listable

_LOGGER = logging.getLogger(__name__)

LANGUAGES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "tr": "Turkish",
    "zh": "Chinese",
}
SPEAKERS_PER_LANGUAGE = 10
ANNOUNCER = "announcer"
# Each language's default voice (speaker 0, but English keeps the long-standing speaker 6).
# Home Assistant lists a language's voices sorted by description and a new pipeline takes the
# first, so a default's description starts with DEFAULT_MARK, which sorts before any letter.
DEFAULT_SPEAKERS = {code: 6 if code == "en" else 0 for code in LANGUAGES}
DEFAULT_MARK = "(default) "
# A custom voice file NAME.LANG.npz (e.g. grandpa.de.npz) is voice NAME in that language only.
_CUSTOM_LANGUAGE_RE = re.compile(rf"^(?P<name>.+)\.(?P<lang>{'|'.join(LANGUAGES)})$")
# Bark's prompts are tens of kilobytes; these bounds keep a hostile file from costing more.
MAX_CUSTOM_VOICES = 500  # listed in describe at most (Home Assistant shows them all in one menu)
MAX_VOICE_NAME = 100
RESCAN_S = 1.0  # the voices folder is re-read at most this often, and only when it changed
_BAD_NAME_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]|^-|^\.{1,2}$")


class Recorded(Protocol):
    """Voices made from recordings (``recorded_voices.RecordedVoices``)."""

    def voices(self) -> list[Voice]: ...


@dataclass(frozen=True)
class Voice:
    """One selectable voice as listed in ``info``."""

    name: str
    languages: tuple[str, ...]
    description: str
    path: Path | None = None  # custom voices only


def builtin_voices() -> list[Voice]:
    """The 130 ``v2`` presets (13 languages x 10 speakers) plus ``announcer``."""
    voices = [
        Voice(f"v2/{code}_speaker_{i}", (code,), f"{language} speaker {i}")
        for code, language in LANGUAGES.items()
        for i in range(SPEAKERS_PER_LANGUAGE)
    ]
    voices.append(Voice(ANNOUNCER, ("en",), "English announcer"))
    return voices


def builtin_defaults() -> dict[str, str]:
    """Language code -> the voice a request in that language gets when it names none."""
    return {code: f"v2/{code}_speaker_{speaker}" for code, speaker in DEFAULT_SPEAKERS.items()}


def language_code(language: str) -> str:
    """``de``, ``de-DE``, ``de_DE`` and ``DE`` are all ``de``."""
    return re.split(r"[-_]", language.strip(), maxsplit=1)[0].lower()


def voice_name(stem: str) -> str:
    """A voice's name as listed and matched: Unicode NFC (a name typed on a Mac and on Windows is
    one name)."""
    return unicodedata.normalize("NFC", stem)


# Unicode categories a voice name may not hold: controls, format characters (zero-width spaces,
# bidi overrides such as U+202E that make a name read backwards), line and paragraph separators,
# surrogates, private use and unassigned code points.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def custom_name(stem: str) -> tuple[str, tuple[str, ...]] | str:
    """The voice name and languages of a custom voice file's stem (``NAME`` or ``NAME.LANG``), or
    why it cannot be one."""
    # A history prompt carries no language: Bark speaks any of them with it, unless the file
    # name says which one (NAME.LANG.npz).
    match = _CUSTOM_LANGUAGE_RE.match(stem)
    name, languages = (match["name"], (match["lang"],)) if match else (stem, tuple(LANGUAGES))
    if not _is_utf8(name):
        return "its name is not valid UTF-8"
    name = voice_name(name)
    why = bad_name(name)
    return why if why is not None else (name, languages)


def bad_name(name: str) -> str | None:
    """Why ``name`` cannot be a voice name, or None."""
    if not 1 <= len(name) <= MAX_VOICE_NAME or not name.strip():
        return f"a voice name has 1 to {MAX_VOICE_NAME} characters"
    if _BAD_NAME_RE.search(name) or any(unicodedata.category(char) in _HIDDEN_CATEGORIES for char in name):
        return "a voice name has no control, invisible or text-direction characters, and no leading '-'"
    return None


class VoiceLibrary:
    """Lists voices without touching the model, and loads their prompts on demand.

    ``defaults`` maps each language code to its default voice (``set_default`` changes one).
    """

    def __init__(self, voices_dir: Path | None = None, recorded: Recorded | None = None) -> None:
        self.voices_dir = voices_dir
        self.recorded = recorded  # voices made from recordings (recorded_voices.py)
        self._builtin = {voice.name: voice for voice in builtin_voices()}
        self._cache: dict[tuple[str, int, int], Prompt] = {}  # (source, size, mtime) -> prompt
        self._warned: set[object] = set()  # files (and recorded voices) already reported as skipped
        self.defaults = builtin_defaults()
        self._scan_lock = threading.Lock()
        self._scanned: tuple[int | None, float, list[Voice]] = (None, -RESCAN_S, [])  # mtime, when, voices

    def set_default(self, language: str, name: str) -> None:
        """Make voice ``name`` the default of ``language``; raises UnknownVoice."""
        code = language_code(language)
        if code not in LANGUAGES:
            raise UnknownVoice(f"Unknown language '{language}'; Bark speaks {', '.join(LANGUAGES)}")
        voice = self.resolve(name)
        if code not in voice.languages:
            hint = f", or name its file {voice.name}.{code}.npz" if voice.path is not None else ""
            raise UnknownVoice(
                f"{voice.name} is not a {code} voice (it speaks {', '.join(voice.languages)}); "
                f"pick one listed under {code}{hint}"
            )
        self.defaults[code] = voice.name

    def custom_voices(self) -> list[Voice]:
        """The voices folder's voices: re-read when the folder changed, at most once a second
        (blocking: callers on an event loop use a thread; ``known_custom_voices`` never reads)."""
        try:
            mtime = self.voices_dir.stat().st_mtime_ns if self.voices_dir is not None else None
        except OSError:
            mtime = None
        with self._scan_lock:
            seen, when, voices = self._scanned
            if mtime != seen and time.monotonic() - when >= RESCAN_S:
                voices = self._scan() if mtime is not None else []
                # A change within the same second as the scan may be missed by the mtime: look again.
                self._scanned = (
                    mtime if time.time() - mtime / 1e9 > RESCAN_S else None,
                    time.monotonic(),
                    voices,
                )
        return self._with_recorded(voices)

    def known_custom_voices(self) -> list[Voice]:
        """The custom voices as last read (no disk access)."""
        return self._with_recorded(self._scanned[2])

    def _with_recorded(self, voices: list[Voice]) -> list[Voice]:
        """``voices`` (the ``.npz`` ones, which win) and those made from recordings."""
        if self.recorded is None:
            return voices
        taken, added = {voice.name for voice in voices}, []
        for voice in self.recorded.voices():
            if self._builtin_named(voice.name) is not None or voice.name in taken:
                if ("recorded", voice.name) not in self._warned:
                    self._warned.add(("recorded", voice.name))
                    _LOGGER.warning("The voice made from a recording of %s is not listed: voice %s "
                                    "already exists (its .npz or a built-in voice wins)", voice.name, voice.name)  # fmt: skip
            elif len(voices) + len(added) < MAX_CUSTOM_VOICES:
                added.append(voice)
        return voices + added if added else voices

    def _scan(self) -> list[Voice]:
        voices: dict[str, Voice] = {}
        try:  # names sorted as strings: pathlib's ordering costs seconds for a large folder
            names = sorted(entry.name for entry in os.scandir(self.voices_dir) if entry.name.endswith(".npz"))
        except OSError as err:
            self._skip(self.voices_dir, f"the folder cannot be read ({err.strerror or err})")
            return []
        for path in (self.voices_dir / file_name for file_name in names):
            parsed = custom_name(path.stem)
            # Only what can load is listed: a regular file (a link could point anywhere), in bounds.
            why = parsed if isinstance(parsed, str) else _unlistable(path)
            if why is not None:
                self._skip(path, why)
                continue
            name, languages = parsed
            if self._builtin_named(name) is not None or name in voices:
                self._skip(path, f"voice {name} already exists (built-in names win)")
            elif len(voices) == MAX_CUSTOM_VOICES:
                self._skip(self.voices_dir, f"only the first {MAX_CUSTOM_VOICES} custom voices are listed")
                break
            else:
                voices[name] = Voice(name, languages, f"Custom voice {name}", path)
        return list(voices.values())

    def skipped(self) -> int:
        """Custom voice files (and recorded voices) left out so far."""
        return len(self._warned)

    def _skip(self, path: Path, why: str) -> None:
        """Leave a custom voice file out, saying so once (describe lists the folder every time)."""
        if str(path) not in self._warned:
            self._warned.add(str(path))
            _LOGGER.warning("Custom voice file %s ignored: %s", quoted(path.name), why)

    def _builtin_named(self, name: str) -> Voice | None:
        """The built-in voice ``name``; ``en_speaker_6`` is accepted for ``v2/en_speaker_6``."""
        return self._builtin.get(name) or self._builtin.get(f"v2/{name}")

    def list(self, read_folder: bool = True) -> list[Voice]:
        """Every voice; the default of a language has DEFAULT_MARK before its description.

        ``read_folder=False``: the custom voices as last read, without touching the disk."""
        defaults = set(self.defaults.values())
        custom = self.custom_voices() if read_folder else self.known_custom_voices()
        return [
            replace(voice, description=DEFAULT_MARK + voice.description) if voice.name in defaults else voice
            for voice in (*self._builtin.values(), *custom)
        ]

    def for_language(self, language: str) -> Voice | None:
        """The default voice of ``language`` (any spelling of its code); None for other languages."""
        name = self.defaults.get(language_code(language))
        return self.resolve(name) if name is not None else None

    def resolve(self, name: str) -> Voice:
        """Find a voice by name (built-in names win over custom ones); reads no folder listing."""
        builtin = self._builtin_named(name)
        if builtin is not None:
            return builtin
        name = voice_name(name) if _is_utf8(name) else name
        for voice in self.known_custom_voices():
            if voice.name == name and voice.path is not None and _unlistable(voice.path) is None:
                return voice
        found = self._custom_file(name)
        if found is not None:
            return found
        raise UnknownVoice(f"Unknown voice {quoted(name)}. Send describe to list the available voices.")

    def _custom_file(self, name: str) -> Voice | None:
        """A custom voice not listed yet (added since the last read): its file, looked up directly."""
        if self.voices_dir is None or not _is_utf8(name) or bad_name(name) or "/" in name:
            return None
        if os.sep in name or (os.altsep and os.altsep in name):
            return None
        candidates = [(self.voices_dir / f"{name}.npz", tuple(LANGUAGES))]
        candidates += [(self.voices_dir / f"{name}.{code}.npz", (code,)) for code in LANGUAGES]
        for path, languages in candidates:
            try:
                if _unlistable(path) is None:
                    return Voice(name, languages, f"Custom voice {name}", path)
            except ValueError:  # a name the file system cannot hold
                return None
        return None

    def load(self, voice: Voice, model_dir: Path) -> Prompt:
        """Return the voice's prompt, from the model repo (built-in) or its file (custom).

        Raises ``VoiceGone`` for a custom voice whose file was removed since it was resolved."""
        if voice.path is not None:
            listed = listable(voice.path, MAX_VOICE_FILE_BYTES)
            if isinstance(listed, str):
                if not os.path.lexists(voice.path):
                    raise VoiceGone(f"Voice file {quoted(voice.path.name)} was removed")
                raise VoiceError(f"Voice file {voice.path.name} cannot be used: {listed}")
            key = (f"{voice.path}#{voice.name}", listed.size, listed.mtime_ns)
        else:
            source = model_dir / EMBEDDINGS_INDEX
            try:
                key = (f"{source}#{voice.name}", 0, source.stat().st_mtime_ns)
            except OSError as err:
                raise VoiceError(f"Voice '{voice.name}' is unavailable: {source.name} is missing") from err
        if key not in self._cache:
            prompt = load_npz(voice.path) if voice.path is not None else load_builtin(model_dir, voice.name)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != key[0]}
            self._cache[key] = prompt
        return self._cache[key]


def _unlistable(path: Path) -> str | None:
    """Why ``path`` cannot be a custom voice file now (see ``userfiles.listable``), or None."""
    listed = listable(path, MAX_VOICE_FILE_BYTES)
    return listed if isinstance(listed, str) else None


def _is_utf8(name: str) -> bool:
    """False for file names with bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
