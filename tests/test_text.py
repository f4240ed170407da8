"""Sentence splitting: whole texts, streamed chunks, and sentences too long for one generation."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wyoming_bark.text import MAX_SENTENCE_CHARS, SentenceSplitter, clean_text, split_long, split_sentences


def test_sentences_keep_bark_cues():
    text = "Hello there! [laughs] That is funny... I think so. ♪ In the jungle, the mighty jungle ♪"
    assert split_sentences(text) == [
        "Hello there! [laughs] That is funny...",
        "I think so. ♪ In the jungle, the mighty jungle ♪",
    ]


def test_chinese_and_abbreviations():
    assert split_sentences("Dr. Smith arrived. He sat down.") == ["Dr. Smith arrived.", "He sat down."]
    assert split_sentences("你好。我很好。") == ["你好。", "我很好。"]


def test_long_sentence_is_split_without_losing_text():
    sentence = ", ".join(f"clause number {i} with [laughs] words" for i in range(40)) + "."
    parts = split_long(sentence)
    assert len(parts) > 1
    assert all(len(part) <= MAX_SENTENCE_CHARS for part in parts)
    assert " ".join(parts).split() == sentence.split()
    assert all(part.count("[") == part.count("]") for part in parts), "a cue was cut"


def test_long_text_without_punctuation_or_spaces():
    words = "word " * 150
    parts = split_sentences(words)
    assert all(len(part) <= MAX_SENTENCE_CHARS for part in parts)
    assert " ".join(parts).split() == words.split()
    cjk = "字" * 450
    assert "".join(split_sentences(cjk)) == cjk
    assert max(len(part) for part in split_sentences(cjk)) <= MAX_SENTENCE_CHARS


def test_streamed_chunks_split_mid_word_give_the_same_sentences():
    text = "Hello world. This is a test! Is it working? Yes, it is... Done"
    splitter = SentenceSplitter()
    streamed = []
    for i in range(0, len(text), 3):
        streamed += splitter.add(text[i : i + 3])
    assert streamed == split_sentences(text)[:-1], "only complete sentences before the end"
    assert streamed + splitter.finish() == split_sentences(text)


def test_empty_text():
    assert split_sentences("") == []
    assert split_sentences("   \n ") == []


def stream(text: str, step: int, **options) -> list[str]:
    splitter = SentenceSplitter(**options)
    out = []
    for i in range(0, len(text), step):
        out += splitter.add(text[i : i + step])
    return out + splitter.finish()


def test_quick_start_cuts_a_long_first_sentence_at_a_clause():
    text = "Well, considering everything that happened today, I think we should go home now. Then rest, and sleep."
    assert stream(text, 5) == split_sentences(text)
    assert stream(text, 5, quick_start=True) == [
        "Well, considering everything that happened today,",
        "I think we should go home now.",
        "Then rest, and sleep.",
    ], "only the first sentence, and not at 'Well,' (too short a clause)"
    short = "Yes, it is done. Good, very good."
    assert stream(short, 3, quick_start=True) == split_sentences(short), (
        "short first sentences are left whole"
    )


def test_run_on_stream_is_spoken_in_parts_without_losing_words():
    text = "".join(f"word{i} " for i in range(100))
    parts = stream(text, 7)
    assert len(parts) == 4 and all(len(part) <= MAX_SENTENCE_CHARS for part in parts)
    assert " ".join(parts).split() == text.split()


# --- properties (hypothesis): any text, in any chunks --------------------------------------------

_BLANKS = st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x0b", "\u00a0", "\u3000", "\ud800", "\x7f"])
_TEXT = st.text(
    alphabet=st.one_of(_BLANKS, st.sampled_from(list("ab.,!?;: []♪…。你")), st.characters()),
    max_size=700,
)


def _chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(max(c, 0), len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def _visible(text: str) -> str:
    """The characters a listener should get: all but blanks (and the asterisks of markdown
    emphasis, which sentence-stream drops on purpose: LLM answers are full of them)."""
    return "".join(clean_text(text).split()).replace("*", "")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT, cuts=st.lists(st.integers(0, 700), max_size=12), quick=st.booleans())
def test_the_splitter_never_raises_nor_loses_or_reorders_text(text, cuts, quick):
    splitter = SentenceSplitter(quick_start=quick)
    sentences = []
    for chunk in _chunked(text, cuts):
        sentences += splitter.add(clean_text(chunk))
    sentences += splitter.finish()
    assert all(sentence.strip() for sentence in sentences), "a blank sentence"
    assert "".join(_visible(s) for s in sentences) == _visible(text)


@pytest.mark.parametrize("blank", [" ", "\t", "\x00", "\u00a0", "\ud800", " \n\t\u00a0"])
def test_blank_text_of_any_length_is_no_sentence(blank):
    for length in (1, 199, 200, 201, 1000):
        text = clean_text((blank * length)[:length])
        assert split_sentences(text) == []
        splitter = SentenceSplitter(quick_start=True)
        assert splitter.add(text) + splitter.add(text) + splitter.finish() == []
