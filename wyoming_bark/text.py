"""Sentence splitting for Bark, which speaks at most about 14 s per generation.

Sentence boundaries come from ``sentence-stream`` (the splitter Home Assistant's own streaming
TTS uses): it works on partial text, so streamed chunks split mid-word are handled, and it is
language-agnostic enough for Bark's 13 languages. Sentences that are still too long for one
generation are cut at clause punctuation, then between words. Bark's cues (``[laughs]``,
``♪``, ``...``) pass through untouched: a bracketed cue is never cut.
"""

from __future__ import annotations

import re

from sentence_stream import SentenceBoundaryDetector

# About 14 s of speech at a typical 14-15 characters per second.
MAX_SENTENCE_CHARS = 200

# Control characters (but newline and tab) and lone surrogates are noise to the tokenizer.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# Quick start: a first sentence this long is cut at its first clause boundary after
# QUICK_START_MIN_CLAUSE characters ("Well, ..." is too short a clause to be worth it).
QUICK_START_CHARS = 60
QUICK_START_MIN_CLAUSE = 15
_EARLY_CLAUSE_RE = re.compile(rf"(?<=.{{{QUICK_START_MIN_CLAUSE}}})[,;:\u3001\uff0c\uff1b\u2014\u2013](?=\s)")
_CLAUSE_RE = re.compile(r"(?<=[,;:\u3001\uff0c\uff1b\u2014\u2013])\s+")
_WORD_RE = re.compile(r"\[[^\]]*\]|\S+")


def clean_text(text: str) -> str:
    """Drop control characters; everything else (cues, emoji, any script) passes through."""
    return _CONTROL_RE.sub(" ", text)


def _pack(pieces: list[str], max_chars: int, sep: str) -> list[str]:
    """Greedily join pieces into parts of at most ``max_chars`` (a single piece may exceed it)."""
    parts: list[str] = []
    for piece in pieces:
        if parts and len(parts[-1]) + len(sep) + len(piece) <= max_chars:
            parts[-1] += sep + piece
        else:
            parts.append(piece)
    return parts


def split_long(sentence: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Split one sentence into parts Bark can speak in a single generation."""
    sentence = sentence.strip()
    if len(sentence) <= max_chars:
        return [sentence] if sentence else []
    parts: list[str] = []
    for clause in _pack(_CLAUSE_RE.split(sentence), max_chars, " "):
        if len(clause) <= max_chars:
            parts.append(clause)
            continue
        for words in _pack(_WORD_RE.findall(clause), max_chars, " "):
            # A "word" longer than a whole part (no spaces, e.g. Chinese): cut it.
            parts.extend(words[i : i + max_chars] for i in range(0, len(words), max_chars))
    return parts


class SentenceSplitter:
    """Feed text in arbitrary chunks; get back speakable sentences as soon as they are complete.

    With ``quick_start``, a long first sentence is not waited for: once its text passes
    ``QUICK_START_CHARS`` and holds a clause boundary, it is spoken up to that boundary, so the
    first audio comes sooner (used for streaming synthesis).
    """

    def __init__(self, max_chars: int = MAX_SENTENCE_CHARS, quick_start: bool = False) -> None:
        self.max_chars = max_chars
        self._detector = SentenceBoundaryDetector()
        self._waiting_for_first = quick_start

    def _pending(self) -> str:
        return self._detector.current_sentence + self._detector.remaining_text

    def _cut(self, parts: list[str], spacing: str) -> list[str]:
        """Emit all of ``parts`` but the last, which goes back into the buffer."""
        *ready, rest = parts
        self._detector.finish()
        return ready + list(self._detector.add_chunk(rest + spacing))

    def add(self, chunk: str) -> list[str]:
        """Sentences completed by this chunk, and the start of a text too long to wait for."""
        sentences = [part for s in self._detector.add_chunk(chunk) for part in split_long(s, self.max_chars)]
        pending = self._pending()
        spacing = pending[len(pending.rstrip()) :]  # finish() strips it; the next word needs it
        if len(pending) > self.max_chars:
            # No end in sight: speak all but the last (possibly unfinished) part now.
            parts = split_long(pending, self.max_chars)
            if parts:
                sentences += self._cut(parts, spacing)
            else:  # nothing but blanks: there is nothing to say, and nothing to keep
                self._detector.finish()
        elif self._waiting_for_first and not sentences and len(pending.strip()) >= QUICK_START_CHARS:
            clause = _EARLY_CLAUSE_RE.search(pending.strip())
            if clause:
                text = pending.strip()
                sentences += self._cut([text[: clause.end()].strip(), text[clause.end() :]], spacing)
        if sentences:
            self._waiting_for_first = False
        return sentences

    def finish(self) -> list[str]:
        """Whatever text remains, as sentences."""
        return split_long(self._detector.finish(), self.max_chars)


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Split a whole text into speakable sentences."""
    splitter = SentenceSplitter(max_chars)
    return splitter.add(text) + splitter.finish()
