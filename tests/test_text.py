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
