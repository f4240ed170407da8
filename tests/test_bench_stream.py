"""The bench's real-time player: pauses are counted only where audio came after it was due."""

from __future__ import annotations

import pytest

from wyoming_bark.bench.stream import playback

SECOND = 24_000  # samples


def test_audio_that_keeps_ahead_plays_without_pauses():
    # Three 1 s chunks, each arriving before the previous one has finished playing.
    assert playback([(10.0, SECOND), (10.5, SECOND), (11.9, SECOND)])["pauses"] == 0


def test_late_audio_is_a_pause_of_the_lateness():
    result = playback([(10.0, SECOND), (12.5, SECOND), (13.0, SECOND), (16.0, SECOND // 2)])
    # Due at 11.0 (came 12.5: 1.5 s), then due at 14.5 (came 16.0: 1.5 s).
    assert result["pauses"] == 2
    assert result["paused_s"] == pytest.approx(3.0) and result["longest_pause_s"] == pytest.approx(1.5)


def test_no_audio_no_pauses():
    assert playback([]) == {"pauses": 0, "paused_s": 0.0, "longest_pause_s": 0.0}
