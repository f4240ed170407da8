"""How long a sentence's speech may run: Bark's best-known failure is speaking on past the text.

Bark ends a generation when it predicts end-of-speech; sometimes it does not, and a two-word
reply becomes 15 s of babble, noise or music until the token limit. So each sentence gets at
most ``max(FLOOR_S, ratio x expected)`` seconds of semantic tokens, the expected duration read
from the text. The rate is that of unhurried read speech (about 150 words a minute, 14-15
characters a second in English); a CJK character, kana or hangul syllable is a syllable of its
own and counts as ``WIDE_CHAR_WEIGHT`` Latin characters; a bracketed cue (``[laughs]``) counts
as ``CUE_S`` seconds. Sung or musical text (``♪``, ``[music]``) is not capped: its length is the
song's, not the words'.
"""

from __future__ import annotations

import math
import re

SEMANTIC_RATE_HZ = 49.9  # semantic tokens per second of speech
CHARS_PER_S = 14.0
WIDE_CHAR_WEIGHT = 3
CUE_S = 1.0
FLOOR_S = 3.0
DEFAULT_RATIO = 2.5

_CUE_RE = re.compile(r"\[[^\]]*\]")
_MUSIC_RE = re.compile(r"♪|\[music\]", re.IGNORECASE)
# CJK ideographs, kana, hangul and their punctuation and full-width forms.
_WIDE_RE = re.compile(
    r"[\u1100-\u11ff\u3000-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)


def expected_seconds(text: str) -> float:
    """About how long ``text`` takes to say at an unhurried pace."""
    cues = len(_CUE_RE.findall(text))
    words = _CUE_RE.sub(" ", text)
    wide = len(_WIDE_RE.findall(words))
    narrow = len(words.strip()) - wide
    return (narrow + WIDE_CHAR_WEIGHT * wide) / CHARS_PER_S + cues * CUE_S


def max_semantic_tokens(text: str, ratio: float, limit: int) -> int:
    """The semantic tokens ``text`` may take: ``limit`` when uncapped (``ratio`` 0, or music)."""
    if ratio <= 0 or _MUSIC_RE.search(text):
        return limit
    seconds = max(FLOOR_S, ratio * expected_seconds(text))
    return min(limit, math.ceil(seconds * SEMANTIC_RATE_HZ))
