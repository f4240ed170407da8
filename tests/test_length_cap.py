"""Speech that ends when the text does: a sentence's audio is capped by its text's length."""

from __future__ import annotations

import pytest
from helpers import samples_for, synthesize

from wyoming_bark.length_cap import FLOOR_S, SEMANTIC_RATE_HZ, expected_seconds, max_semantic_tokens

SHORT = "Hi there."
LONG = (
    "This sentence is long enough that its expected length, read at an unhurried pace and "
    "multiplied by the ratio, is well beyond the fifteen seconds Bark can say at most."
)


def test_expected_length_reads_the_text():
    assert expected_seconds("a" * 14) == pytest.approx(1.0)
    assert expected_seconds("你好世界") == pytest.approx(4 * 3 / 14), "a CJK character is a syllable"
    assert expected_seconds("[laughs]") == pytest.approx(1.0), "a cue takes its own time"
    floor = round(FLOOR_S * SEMANTIC_RATE_HZ + 0.5)
    assert max_semantic_tokens("Yes.", 2.5, 768) == floor, "short replies get the floor"
    assert max_semantic_tokens(LONG, 2.5, 768) == 768, "long ones Bark's own limit"
    assert max_semantic_tokens("Yes.", 0, 768) == 768, "0: off"
    assert max_semantic_tokens("♪ la la ♪", 2.5, 768) == 768, "songs are as long as they are"
    assert max_semantic_tokens("[MUSIC] yes", 2.5, 768) == 768
    assert max_semantic_tokens("Yes.", 2.5, 40) == 40, "--max-semantic-tokens still wins"


@pytest.fixture(scope="module")
def endless_server(server_factory, tiny_model):
    """A model that never ends a sentence by itself: end-of-speech is never likely enough, and
    the seed keeps it from being drawn (the long sentence below shows it runs to the limit)."""
    return server_factory("--model", str(tiny_model), "--min-eos-p", "1", "--seed", "3", "--debug")


async def test_a_short_sentence_stops_at_the_cap(endless_server):
    result = await synthesize(endless_server.uri, SHORT)
    assert result.samples == samples_for(max_semantic_tokens(SHORT, 2.5, 768))
    assert result.samples <= (FLOOR_S + 0.1) * 24_000
    assert "Cut at 3.0 s" in endless_server.log_text()


@pytest.mark.slow
@pytest.mark.parametrize("text", [LONG, "♪ la la la ♪"])
async def test_long_or_sung_sentences_run_to_bark_s_limit(endless_server, text):
    result = await synthesize(endless_server.uri, text)
    assert result.samples == samples_for(768)
