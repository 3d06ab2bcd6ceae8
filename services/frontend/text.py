"""The text frontend: normalise a request's text and split it into segments to synthesise.

Follows upstream CosyVoice's `CosyVoiceFrontEnd.text_normalize` with the `wetext` engine (no
ttsfrd): Chinese text goes through wetext zh and the reference's clean-ups and is measured in
characters; other text goes through wetext en, then its digit runs are spelled out, and it is
measured in LLM tokens. We add Japanese (any kana → wetext ja, split like Chinese). Splitting is
in `text_split`. docs/text-frontend.md lists every difference from the reference and why.

Thread safety: `TextFrontend` may be shared by a thread pool. The wetext graphs are process-wide
C++ objects whose thread safety is not documented, and `inflect.engine.number_to_words` stores
its arguments on the engine, so every wetext and inflect call holds one module lock (each call
takes a few milliseconds). Splitting runs outside it and calls `count_tokens` concurrently, so
that must be thread-safe (a `tokenizers.Tokenizer` is).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable

from services.frontend.text_split import is_speakable, split_paragraph

logger = logging.getLogger(__name__)

LANGUAGES = ("zh", "en", "ja")
# The reference's test for Chinese: a CJK unified ideograph.
_HAN = re.compile(r"[\u4e00-\u9fff]")
# Hiragana and katakana (not the "・" and "ー" marks that Chinese text also uses), katakana
# phonetic extensions and half-width katakana.
_KANA = re.compile(r"[\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fd-\u30ff\u31f0-\u31ff\uff66-\uff9d]")
_SPACES = re.compile(r"\s+")
_DIGITS = re.compile(r"[0-9]+")
_LONE_DOT = re.compile(r"(?<![A-Za-z0-9])\.|\.(?![A-Za-z0-9])")
_TRAILING_COMMAS = re.compile(r"[，,、]+$")
_WETEXT_ESCAPE = re.compile(r'\\(["\\])')
# wetext en reads 1,000-1,999 (and $1,299.99) without the "one": "thousand two hundred ...".
_ONE_THOUSAND_INPUT = re.compile(r"(?<![0-9,.])1,?[0-9]{3}(?![0-9])")
_BARE_THOUSAND = re.compile(r"(^|\b[A-Za-z]+\s+|[^A-Za-z\s]\s*)thousand\b")
_NUMBER_WORDS = frozenset(
    "a one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred".split()
)

_LOCK = threading.Lock()
_normalizers: dict[str, Any] = {}
_inflect: list[Any] = []


def has_special_tokens(text: str) -> bool:
    """The reference's rule: text holding `<|` and `|>` skips the frontend entirely."""
    return "<|" in text and "|>" in text


def detect_language(text: str) -> str:
    """"ja" if the text has any kana, else "zh" if it has a CJK ideograph, else "en".

    Kana never occur in Chinese, and almost every Japanese sentence has some; Japanese written
    only in kanji is read as Chinese. Everything else (French, German, ...) takes the English
    path, as in upstream: there is no guessing of other languages.
    """
    if _KANA.search(text):
        return "ja"
    if _HAN.search(text):
        return "zh"
    return "en"


def _normalizer(lang: str) -> Any:
    """The wetext normaliser for `lang`, created on first use. Call with _LOCK held."""
    if lang not in _normalizers:
        from wetext import Normalizer  # loads every graph: about 0.7 s, once per process

        options = {"remove_erhua": False} if lang == "zh" else {}
        _normalizers[lang] = Normalizer(lang=lang, operator="tn", **options)
    return _normalizers[lang]


def _wetext(lang: str, text: str) -> str:
    """wetext TN of `text`; on a wetext failure, the text unchanged (logged)."""
    try:
        with _LOCK:
            return _normalizer(lang).normalize(text)
    except Exception:  # noqa: BLE001 - wetext raises bare assertions on inputs it cannot parse
        logger.warning("wetext %s failed on %r; text left unnormalised", lang, text[:80], exc_info=True)
        return text


def _number_to_words(digits: str) -> str:
    with _LOCK:
        if not _inflect:
            import inflect

            _inflect.append(inflect.engine())
        engine = _inflect[0]
        try:
            return engine.number_to_words(digits)
        except Exception:  # noqa: BLE001 - inflect gives up past 10**36: read digit by digit
            return engine.number_to_words(digits, group=1)


def spell_out_digits(text: str) -> str:
    """Every ASCII digit run → English words with inflect (the reference's spell_out_number)."""
    return _DIGITS.sub(lambda m: _number_to_words(m.group()), text)


def _restore_one_thousand(source: str, out: str) -> str:
    if not _ONE_THOUSAND_INPUT.search(source):
        return out

    def fix(m: re.Match[str]) -> str:
        before = m.group(1)
        if before.strip().lower() in _NUMBER_WORDS:
            return m.group(0)
        return f"{before}one thousand"

    return _BARE_THOUSAND.sub(fix, out)


def normalize_en(text: str) -> str:
    """English (and every non-CJK language): wetext en, then digit runs spelled out."""
    text = _SPACES.sub(" ", text).strip()  # wetext en fails on runs of spaces
    if not text:
        return ""
    out = _wetext("en", text)
    out = _WETEXT_ESCAPE.sub(r"\1", out)  # wetext en writes `"` as `\"` and `\` as `\\`
    out = _restore_one_thousand(text, out)
    out = spell_out_digits(out)
    return _SPACES.sub(" ", out).strip()


def replace_blank(text: str) -> str:
    """Drop each space unless both neighbours are non-space ASCII (words of embedded English)."""

    def keep(i: int) -> bool:
        return 0 < i < len(text) - 1 and all(
            c.isascii() and not c.isspace() for c in (text[i - 1], text[i + 1])
        )

    return "".join(c for i, c in enumerate(text) if c != " " or keep(i))


def normalize_cjk(text: str, lang: str) -> str:
    """Chinese or Japanese: wetext zh/ja, then the reference's Chinese clean-ups."""
    out = _wetext(lang, text)
    out = out.replace("\r", "").replace("\n", "")
    out = replace_blank(_SPACES.sub(" ", out).strip())
    out = out.replace("²", "平方").replace("³", "立方")
    out = _LONE_DOT.sub("。", out)  # but not inside "3.10" or "www.example.com"
    out = out.replace(" - ", "，")
    for mark in "（）【】`":
        out = out.replace(mark, "")
    out = out.replace("——", " ")
    return _TRAILING_COMMAS.sub("。", out)


class TextFrontend:
    """Text → normalised segments, the way the reference's `text_normalize` does it.

    `count_tokens` is the LLM tokenizer's length of a string; English lengths use it, Chinese
    and Japanese lengths are characters. The limits are the reference's split_paragraph ones.
    """

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        token_max_n: int = 80,
        token_min_n: int = 60,
        merge_len: int = 20,
    ) -> None:
        if not 0 < token_min_n <= token_max_n:
            raise ValueError(f"need 0 < token_min_n <= token_max_n, got {token_min_n}, {token_max_n}")
        self._count_tokens = count_tokens
        self.token_max_n = token_max_n
        self.token_min_n = token_min_n
        self.merge_len = merge_len

    @staticmethod
    def warm_up() -> None:
        """Load wetext and inflect now instead of on the first request (optional)."""
        for lang in LANGUAGES:
            _wetext(lang, "1")
        spell_out_digits("1")

    @staticmethod
    def normalize(text: str, lang: str) -> str:
        """`text` normalised as `lang` ("zh", "en" or "ja"), not split."""
        if lang == "en":
            return normalize_en(text)
        if lang in ("zh", "ja"):
            return normalize_cjk(text.strip(), lang)
        raise ValueError(f"unknown language {lang!r}")

    def segments(self, text: str, enabled: bool = True) -> list[str]:
        """The segments to synthesise one after another, normalised, in order.

        - `enabled=False`, or text with special tokens (`<|` and `|>`): `[text]`, untouched.
        - Otherwise an EMPTY LIST means nothing is left to speak (empty or blank text, only
          punctuation, symbols or emoji): reject with "text: nothing to speak after
          normalisation". Every returned segment holds a letter or digit.
        """
        if not enabled or has_special_tokens(text):
            return [text]
        text = text.strip()
        if not is_speakable(text):
            return []
        lang = detect_language(text)
        return split_paragraph(
            self.normalize(text, lang),
            self._count_tokens,
            lang,
            token_max_n=self.token_max_n,
            token_min_n=self.token_min_n,
            merge_len=self.merge_len,
        )

    def normalize_prompt(self, text: str, enabled: bool = True) -> str:
        """The prompt transcript, normalised but not split (the reference's split=False).

        Returned untouched when `enabled=False` or it holds special tokens; blank text → "".
        No final punctuation is added and nothing is dropped.
        """
        if not enabled or has_special_tokens(text):
            return text
        text = text.strip()
        if not text:
            return ""
        return self.normalize(text, detect_language(text))
