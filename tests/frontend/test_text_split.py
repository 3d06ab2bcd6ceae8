"""Sentence splitting and packing: parity with the reference's own split_paragraph where we follow
it, and the documented differences where we do not (services/frontend/text_split.py)."""

from __future__ import annotations

import pytest

from services.frontend.text_split import is_speakable, split_paragraph, split_sentences

# cosyvoice.utils.frontend_utils imports only re and regex: no stubs needed.
from cosyvoice.utils import frontend_utils as ref  # noqa: E402  (the reference, as an oracle)

EN_PARAGRAPH = (
    "Streaming text to speech sends the first audio before the sentence is finished. "
    "The gateway cuts a long text into segments; each one is synthesised on its own. "
    "What time is it? It is half past ten, and the meeting starts at eleven. "
    "Voices, tokens, mel frames and waveforms: twenty five tokens per second of audio. "
    "The quick brown fox jumps over the lazy dog! Hello, this is a tiny model with random "
    "weights. It makes noise, not speech. A short one. And the last sentence has no final mark"
)
ZH_PARAGRAPH = (
    "收到好友从远方寄来的生日礼物，那份意外的惊喜与深深的祝福让我心中充满了甜蜜的快乐，笑容如花儿般绽放。"
    "希望你以后能够做的比我还好呦。今天天气很好，我们去公园散步吧！你觉得怎么样？"
    "公园里有湖、有树、有花；湖边的长椅上坐着几位老人，他们一边晒太阳一边聊天，看起来非常惬意。"
    "我们沿着小路走了很久，直到太阳下山才回家。晚饭是妈妈做的红烧肉和清炒时蔬，味道好极了。"
    "吃完饭以后，我们一起看了一部电影：电影讲的是一个小男孩寻找失散多年的父亲的故事"
)
# Limits under which no sentence of the paragraphs is over-long (> 2 * max), where we differ.
LIMITS = [(80, 60, 20), (50, 30, 10), (30, 20, 10)]


@pytest.fixture(scope="module")
def blanken_tokenizer(tmp_path_factory):
    """The tiny model's LLM tokenizer (CosyVoice-BlankEN), written without the model weights."""
    from services.common.modeldir.tokenizer import CosyVoiceTokenizer
    from services.tinymodel.tokenizer_files import write_tokenizer_dir

    directory = tmp_path_factory.mktemp("tiny") / "CosyVoice-BlankEN"
    write_tokenizer_dir(directory)
    return CosyVoiceTokenizer.from_dir(directory)


def reference_segments(text, tokenizer, lang, max_n, min_n, merge):
    pieces = ref.split_paragraph(text, tokenizer.encode, lang, max_n, min_n, merge, comma_split=False)
    return [p.strip() for p in pieces if not ref.is_only_punctuation(p)]


@pytest.mark.parametrize("max_n,min_n,merge", LIMITS)
def test_english_parity_with_reference(blanken_tokenizer, max_n, min_n, merge):
    count = lambda s: len(blanken_tokenizer.encode(s))  # noqa: E731
    ours = split_paragraph(EN_PARAGRAPH, count, "en", max_n, min_n, merge)
    assert ours == reference_segments(EN_PARAGRAPH, blanken_tokenizer, "en", max_n, min_n, merge)
    assert len(ours) > 1 or max_n == 80


@pytest.mark.parametrize("max_n,min_n,merge", LIMITS)
def test_chinese_parity_with_reference(blanken_tokenizer, max_n, min_n, merge):
    ours = split_paragraph(ZH_PARAGRAPH, len, "zh", max_n, min_n, merge)
    assert ours == reference_segments(ZH_PARAGRAPH, blanken_tokenizer, "zh", max_n, min_n, merge)
    assert len(ours) > 1


def test_chinese_default_limits_segments():
    segments = split_paragraph(ZH_PARAGRAPH, len, "zh")
    assert "".join(segments) == ZH_PARAGRAPH + "。"
    assert [len(s) for s in segments] == [65, 68, 83]
    assert segments[0].endswith("比我还好呦。")
    assert segments[1].endswith("看起来非常惬意。")


def test_pieces_concatenate_back():
    for text, lang in [(EN_PARAGRAPH, "en"), (ZH_PARAGRAPH, "zh"), ("“你好。”他说。。。「はい。」", "ja")]:
        assert "".join(split_sentences(text, lang)) == text


def test_english_dot_ends_a_sentence_only_before_whitespace():
    text = "Version 3.10 is at www.example.com now. Ratio 3:2 holds. It ends."
    assert split_sentences(text, "en") == ["Version 3.10 is at www.example.com now.", " Ratio 3:2 holds.", " It ends."]
    # The reference cuts inside the number and the address.
    assert "Version 3." in ref.split_paragraph(text, str.split, "en", 1, 0, 0)


def test_abbreviations_and_initials_do_not_end_sentences():
    text = "We met J. K. Rowling at Baker St. in London, e.g. near the park. Then we left."
    assert split_sentences(text, "en") == [
        "We met J. K. Rowling at Baker St. in London, e.g. near the park.",
        " Then we left.",
    ]
    # A digit before "." followed by whitespace does end a sentence: "chapter 3. Next".
    assert split_sentences("See chapter 3. Next one.", "en") == ["See chapter 3.", " Next one."]


def test_quotes_and_runs_stay_with_their_sentence():
    assert split_sentences('He said "Stop!" Then what?! Nothing... "Really?" ok', "en") == [
        'He said "Stop!"', " Then what?!", " Nothing...", ' "Really?"', " ok",
    ]
    assert split_sentences("他说：“你好！”她笑了。", "zh") == ["他说：", "“你好！”", "她笑了。"]
    assert split_sentences("「こんにちは。」と言った。", "ja") == ["「こんにちは。」", "と言った。"]


def test_closing_quote_at_the_start_does_not_crash():
    # The reference pops from an empty list here.
    with pytest.raises(IndexError):
        ref.split_paragraph("。”好的", len, "zh")
    assert split_paragraph("。”好的", len, "zh") == ["。”好的。"]


def test_no_period_after_a_closing_quote():
    words = lambda s: len(s.split())  # noqa: E731
    # The reference appends one too, but then loses it as an empty sentence: same result.
    assert split_paragraph("他说：“你好。”", len, "zh") == ["他说：“你好。”"]
    assert ref.split_paragraph("他说：“你好。”", len, "zh") == ["他说：“你好。”"]
    assert split_paragraph('She said "hi."', words, "en") == ['She said "hi."']


def test_japanese_is_not_split_at_its_comma():
    assert split_sentences("りんごを三個、みかんを十個買いました。", "ja") == ["りんごを三個、みかんを十個買いました。"]
    assert split_sentences("苹果、香蕉。", "zh") == ["苹果、", "香蕉。"]


def test_overlong_sentence_is_cut_at_commas_then_words():
    words = lambda s: len(s.split())  # noqa: E731
    clause = " ".join(["word"] * 15)
    text = ", ".join([clause] * 8) + "."
    segments = split_paragraph(text, words, "en", 40, 30, 10)
    assert len(segments) > 1 and all(words(s) <= 80 for s in segments)
    assert " ".join(segments).split() == text.split()

    no_commas = " ".join(f"w{i}" for i in range(500))
    segments = split_paragraph(no_commas, words, "en", 40, 30, 10)
    assert all(words(s) <= 80 for s in segments)
    assert " ".join(segments) == no_commas + "."

    chinese = "好" * 500
    segments = split_paragraph(chinese, len, "zh", 80, 60, 20)
    assert all(len(s) <= 160 for s in segments) and "".join(segments) == chinese + "。"


def test_lengths_respect_the_limits():
    """With every sentence <= max - min, segments stay <= max (the last may take a short tail)
    and every segment but the last is longer than min."""
    words = lambda s: len(s.split())  # noqa: E731
    sentences = [" ".join(["la"] * (1 + (7 * i) % 19)) + "." for i in range(60)]
    text = " ".join(sentences)
    max_n, min_n, merge = 40, 20, 5
    segments = split_paragraph(text, words, "en", max_n, min_n, merge)
    assert " ".join(segments) == text
    assert all(min_n < words(s) <= max_n for s in segments[:-1])
    assert words(segments[-1]) <= max_n + merge


def test_punctuation_only_segments_are_dropped():
    words = lambda s: len(s.split())  # noqa: E731
    assert split_paragraph("!!! ... ?", words, "en") == []
    assert split_paragraph("。。。！", len, "zh") == []
    assert split_paragraph("😀 🎉.", words, "en") == []
    assert split_paragraph("   ", len, "zh") == []
    assert split_paragraph("Hi. . . ok", words, "en", 1, 0, 0) == ["Hi.", "ok."]
    # The reference keeps " ." (a space is neither punctuation nor symbol).
    assert not ref.is_only_punctuation(" .")
    assert not is_speakable(" .") and is_speakable("5") and is_speakable("é")
