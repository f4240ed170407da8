"""Sentence splitting: whole texts, streamed chunks, and sentences too long for one generation."""

from wyoming_bark.text import MAX_SENTENCE_CHARS, SentenceSplitter, split_long, split_sentences


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
