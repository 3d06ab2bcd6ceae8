"""The text frontend (services/frontend/text.py): language choice, normalisation per language,
the pass-through rules, the empty result, and agreement with upstream's own pipeline."""

from __future__ import annotations

import re

import inflect
import pytest

from services.frontend import text as text_module
from services.frontend.text import TextFrontend, detect_language, spell_out_digits

# The reference's helpers, as an oracle (they import only re and regex).
from cosyvoice.utils import frontend_utils as ref  # noqa: E402


def words(s: str) -> int:
    return len(s.split())


@pytest.fixture(scope="module")
def blanken_tokenizer(tmp_path_factory):
    """The tiny model's LLM tokenizer (CosyVoice-BlankEN), written without the model weights."""
    from services.common.modeldir.tokenizer import CosyVoiceTokenizer
    from services.tinymodel.tokenizer_files import write_tokenizer_dir

    directory = tmp_path_factory.mktemp("tiny") / "CosyVoice-BlankEN"
    write_tokenizer_dir(directory)
    return CosyVoiceTokenizer.from_dir(directory)


@pytest.fixture(scope="module")
def frontend(blanken_tokenizer):
    return TextFrontend(lambda s: len(blanken_tokenizer.encode(s)))


@pytest.mark.parametrize(
    "text,lang",
    [
        ("Hello world", "en"),
        ("你好，世界", "zh"),
        ("今日は良い天気です", "ja"),  # kana -> ja even with kanji
        ("カタカナ", "ja"),
        ("ｶﾀｶﾅ", "ja"),  # half-width katakana
        ("迈克尔・乔丹打篮球", "zh"),  # "・" is not kana
        ("東京都", "zh"),  # kanji only: read as Chinese (documented)
        ("Grüße aus München", "en"),  # no French guess, no German guess
        ("Bonjour, ça va très bien", "en"),
        ("123", "en"),
    ],
)
def test_detect_language(text, lang):
    assert detect_language(text) == lang


ENGLISH = [
    ("The meeting is on 2024-03-15 at 10:30.", "The meeting is on the fifteenth of march twenty twenty four at ten thirty."),
    ("It costs $12.50, or £5, or €20.", "It costs twelve point five dollars, or five pounds, or twenty euros."),
    ("I was born on Jan. 5, 1990.", "I was born on the fifth of january, nineteen ninety."),
    ("We sold 1,250 units at 25% off.", "We sold one thousand two hundred and fifty units at twenty five percent off."),
    ("It was $1,299.99 in total", "It was one thousand two hundred and ninety nine point nine nine dollars in total."),
    ("The 3rd of May, 2nd place, 21st century.", "The third of May, second place, twenty first century."),
    ('He said "wait" and   left.', 'He said "wait" and left.'),
    ("Dr. Smith lives at 221B Baker St.", "doctor Smith lives at two hundred twenty one B Baker St."),
    ("Room 42", "Room forty two."),
    ("123", "one hundred and twenty three."),  # upstream's wetext lang="auto" reads this in Chinese
    ("Grüße aus München, 3 Tage.", "Grüße aus München, three Tage."),
]


@pytest.mark.parametrize("text,expected", ENGLISH)
def test_english_normalisation(frontend, text, expected):
    assert frontend.segments(text) == [expected]


CHINESE = [
    ("2024年3月15日上午10:30开会。", "二零二四年三月十五日上午十点三十分开会。"),
    ("这件衣服花了¥128.5，打了8折。", "这件衣服花了一百二十八点五元，打了八折。"),
    ("面积是120m²，体积是3m³。", "面积是一百二十平方米，体积是三立方米。"),
    ("他的电话是13800138000，", "他的电话是幺三八零零幺三八零零零。"),  # trailing comma -> 。
    ("增长了25%，共1,250人。", "增长了百分之二十五，共一千二百五十人。"),
    ("我用iPhone 15看了www.example.com上的文章.", "我用iPhone十五看了www.example.com上的文章。"),
    ("【通知】（重要）今天下午3点开会——请准时。", "通知重要今天下午三点开会 请准时。"),
    ("第一行\n第二行", "第一行第二行。"),
]


@pytest.mark.parametrize("text,expected", CHINESE)
def test_chinese_normalisation(frontend, text, expected):
    assert frontend.segments(text) == [expected]


JAPANESE = [
    ("2024年3月15日に会議があります。", "二千二十四年三月十五日に会議があります。"),
    ("この本は1,500円です。", "この本は千五百円です。"),
    ("午前10時30分に駅で会いましょう", "午前十時三十分に駅で会いましょう。"),
    ("コーヒーを2杯ください、お願いします、", "コーヒーを二杯ください、お願いします。"),
]


@pytest.mark.parametrize("text,expected", JAPANESE)
def test_japanese_normalisation(frontend, text, expected):
    assert frontend.segments(text) == [expected]


@pytest.mark.parametrize(
    "text", ["<|endofprompt|>Say 5 things.", "You are helpful.<|endofprompt|>", "a <|x|> 3"]
)
def test_special_tokens_pass_through(frontend, text):
    assert frontend.segments(text) == [text]
    assert frontend.normalize_prompt(text) == text


@pytest.mark.parametrize("text", ["", "   ", "  I have 2 cats.  ", "!!!", "今天是2024年"])
def test_disabled_passes_through(frontend, text):
    assert frontend.segments(text, enabled=False) == [text]
    assert frontend.normalize_prompt(text, enabled=False) == text


@pytest.mark.parametrize("text", ["", "   \n", "!!!", "...?!", "。。。！", "😀 🎉", "——", "（）【】"])
def test_nothing_speakable_gives_an_empty_list(frontend, text):
    assert frontend.segments(text) == []


def test_normalize_prompt_is_not_split(frontend):
    assert frontend.normalize_prompt("希望你以后能够做的比我还好呦，") == "希望你以后能够做的比我还好呦。"
    assert frontend.normalize_prompt("  I have 2 cats  ") == "I have two cats"  # no "." added
    long = "One sentence here. Another one there! " * 20
    assert frontend.normalize_prompt(long) == long.strip()
    assert frontend.normalize_prompt("  ") == ""


def test_spell_out_digits_matches_the_reference():
    engine = inflect.engine()
    for text in ["7 and 42 and 1000", "x9y8", "12345678901234567890", "no digits"]:
        assert spell_out_digits(text) == ref.spell_out_number(text, engine)
    # inflect gives up past 10**36; we read such runs digit by digit instead of failing.
    assert spell_out_digits("1" * 40).startswith("one, one, one")


def test_wetext_failure_leaves_text_unnormalised(frontend, monkeypatch):
    class Broken:
        def normalize(self, text):
            raise AssertionError

    monkeypatch.setitem(text_module._normalizers, "en", Broken())
    monkeypatch.setitem(text_module._normalizers, "zh", Broken())
    assert frontend.segments("I have 2 cats") == ["I have two cats."]
    assert frontend.segments("我有2只猫") == ["我有2只猫。"]


LONG_EN = (
    "On March 3, 2024, the team shipped version 2 of the gateway. It streams audio while the "
    "text is still being read, so the first sound arrives in under 300 ms. Long requests are "
    "cut into segments at sentence ends; each segment is synthesised on its own, and the audio "
    "of one segment follows the previous one without a gap. Why does this matter? Because a "
    "listener hears the start of a 10-minute article right away! The price stays the same: "
    "$5 per million characters. Dr. Lee, who leads the project, said it took 6 weeks."
)


def test_long_english_paragraph(frontend, blanken_tokenizer):
    segments = frontend.segments(LONG_EN)
    assert segments == [
        "On the third of march, twenty twenty four the team shipped version two of the gateway. "
        "It streams audio while the text is still being read, so the first sound arrives in under "
        "three hundred milliseconds.",
        "Long requests are cut into segments at sentence ends; each segment is synthesised on its "
        "own, and the audio of one segment follows the previous one without a gap.",
        "Why does this matter? Because a listener hears the start of a ten-minute article right "
        "away! The price stays the same:",
        "five dollars per million characters. doctor Lee, who leads the project, said it took six weeks.",
    ]
    # The reference's merge rule: a segment is closed only once it is longer than token_min_n
    # (the tiny vocabulary makes sentences long: 45 + 75 tokens become one 120-token segment).
    counts = [len(blanken_tokenizer.encode(s)) for s in segments]
    assert all(c > 60 for c in counts[:-1])


LONG_ZH = (
    "2024年3月3日，团队发布了网关的第2版。它在读取文本的同时就开始输出音频，所以第一个声音不到300毫秒就能听到。"
    "较长的请求会在句末被切成若干段；每一段单独合成，后一段的音频紧接着前一段播放，中间没有停顿。"
    "这为什么重要？因为听众打开一篇10分钟的文章，马上就能听到开头！价格保持不变：每百万字符5美元。"
    "负责这个项目的李博士说，整个工作用了6周"
)


def test_long_chinese_paragraph(frontend):
    segments = frontend.segments(LONG_ZH)
    assert segments == [
        "二零二四年三月三日，团队发布了网关的第二版。它在读取文本的同时就开始输出音频，所以第一个声音不到三百毫秒就能听到。"
        "较长的请求会在句末被切成若干段；",
        "每一段单独合成，后一段的音频紧接着前一段播放，中间没有停顿。这为什么重要？因为听众打开一篇十分钟的文章，"
        "马上就能听到开头！价格保持不变：每百万字符五美元。",
        "负责这个项目的李博士说，整个工作用了六周。",  # 21 characters: not below merge_len 20
    ]
    assert [len(s) for s in segments] == [73, 77, 21]


@pytest.mark.parametrize("text", [LONG_ZH, LONG_EN])
def test_upstream_pipeline_agreement(blanken_tokenizer, text):
    """Upstream's text_normalize composed from the reference's own helpers and wetext (lang auto,
    as upstream constructs it) gives the same segments on text where our rules agree."""
    from wetext import Normalizer

    engine = inflect.engine()
    if ref.contains_chinese(text):
        t = Normalizer(remove_erhua=False).normalize(text)
        t = ref.replace_blank(t.replace("\n", ""))
        t = ref.replace_corner_mark(t).replace(".", "。").replace(" - ", "，")
        t = ref.remove_bracket(t)
        t = re.sub(r"[，,、]+$", "。", t)
        lang = "zh"
    else:
        t = ref.spell_out_number(Normalizer().normalize(text), engine)
        lang = "en"
    expected = [
        s.strip()
        for s in ref.split_paragraph(t, blanken_tokenizer.encode, lang, 80, 60, 20)
        if not ref.is_only_punctuation(s)
    ]
    ours = TextFrontend(lambda s: len(blanken_tokenizer.encode(s))).segments(text)
    assert ours == expected


def test_thread_pool_gives_the_sequential_results(frontend):
    from concurrent.futures import ThreadPoolExecutor

    texts = [LONG_EN, LONG_ZH, *(t for t, _ in ENGLISH), *(t for t, _ in CHINESE), *(t for t, _ in JAPANESE)]
    expected = [frontend.segments(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(frontend.segments, texts * 4))
    assert got == expected * 4


def test_limits_are_validated():
    with pytest.raises(ValueError):
        TextFrontend(words, token_max_n=10, token_min_n=20)
    with pytest.raises(ValueError):
        TextFrontend.normalize("x", "fr")
