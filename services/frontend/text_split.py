"""Sentence splitting and segment packing for the text frontend (see docs/text-frontend.md).

Behaviour follows the reference's `split_paragraph` (cut after sentence-final punctuation, then
merge greedily by length), with these deliberate differences:

- A run of final punctuation ("?!", "...") ends one sentence, and every closing quote or bracket
  right after it (`"'”’」』）)》`) stays with that sentence; the reference keeps only one `"`/`”`
  and can pop the wrong sentence (or raise IndexError) when the mark opens the text.
- An ASCII mark directly followed by an ASCII letter or digit never ends a sentence
  ("3.5", "www.example.com", "10:45", "e.g"). In English a mark must also be followed by
  whitespace or the end of the text, and a "." after a known abbreviation or a single letter
  ("St.", "e.g.", "J.") does not end one. The reference cuts after every listed mark.
- Japanese is split like Chinese (length in characters) but not at "、", its ordinary comma.
- A sentence longer than twice `token_max_n` is first cut at commas, then (if still too long)
  at word boundaries (English) or every `token_max_n` characters (Chinese, Japanese); the
  reference would send it as one segment however long it is.
- Segments are stripped, and any without a letter or digit is dropped (the reference drops
  only those made purely of punctuation and symbols, so " ." survived).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

# Sentence-final marks per language (the reference's lists; "ja" is "zh" without "、").
FINAL_PUNCT = {
    "zh": frozenset("。？！；：、.?!;"),
    "ja": frozenset("。？！；：.?!;"),
    "en": frozenset(".?!;:"),
}
CLOSERS = frozenset("\"'”’」』）)》")
_COMMAS = frozenset("，,、；;")
# Lower-cased words that a "." follows without ending an English sentence. "etc." is left out:
# it ends sentences as often as not. wetext already expands Mr./Mrs./Dr.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs mt no fig approx dept est e.g i.e cf al inc ltd co".split()
)
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def is_speakable(text: str) -> bool:
    """Whether `text` holds at least one letter or digit (Unicode categories L* and N*)."""
    return any(unicodedata.category(c)[0] in "LN" for c in text)


def _is_ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _ends_sentence(text: str, start: int, end: int, lang: str) -> bool:
    """Whether the run of final marks text[start:end] (closers included) ends a sentence."""
    nxt = text[end] if end < len(text) else ""
    if text[end - 1].isascii() and _is_ascii_alnum(nxt):
        return False
    if lang != "en":
        return True
    if nxt and not nxt.isspace():
        return False
    if text[start:end].rstrip("".join(CLOSERS)) == ".":
        word = _WORD_BEFORE.search(text[:start])
        if word and (len(word.group(1)) == 1 or word.group(1).lower() in ABBREVIATIONS):
            return False
    return True


def split_sentences(text: str, lang: str) -> list[str]:
    """Cut `text` after each sentence end; the pieces concatenate back to `text`."""
    marks = FINAL_PUNCT[lang]
    pieces: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        if text[i] not in marks:
            i += 1
            continue
        run_start = i
        while i < n and text[i] in marks:
            i += 1
        while i < n and text[i] in CLOSERS:
            i += 1
        if _ends_sentence(text, run_start, i, lang):
            pieces.append(text[start:i])
            start = i
    if start < n:
        pieces.append(text[start:])
    return pieces


def ends_with_sentence_end(text: str, lang: str) -> bool:
    stripped = text.rstrip().rstrip("".join(CLOSERS))
    return bool(stripped) and stripped[-1] in FINAL_PUNCT[lang]


def _cut_long(piece: str, lang: str, length: Callable[[str], int], limit: int, hard: int) -> list[str]:
    """Cut an over-long sentence at commas, then at words (en) or every `hard` characters."""
    clauses = re.split(r"(?<=[，、；])|(?<=[,;])(?=\s)", piece)
    out: list[str] = []
    for clause in (c for c in clauses if c):
        if length(clause) <= limit:
            out.append(clause)
        elif lang == "en":
            cur = ""
            for word in re.findall(r"\s*\S+", clause):
                if cur and length(cur + word) > hard:
                    out.append(cur)
                    cur = ""
                cur += word
            out.append(cur)
        else:
            out.extend(clause[k:k + hard] for k in range(0, len(clause), hard))
    return [c for c in out if c]


def split_paragraph(
    text: str,
    count_tokens: Callable[[str], int],
    lang: str,
    token_max_n: int = 80,
    token_min_n: int = 60,
    merge_len: int = 20,
) -> list[str]:
    """Normalised text → segments (stripped, speakable), in order. Empty if none is speakable.

    Lengths are characters for "zh" and "ja" and `count_tokens` for "en", as in the reference.
    """
    text = text.strip()
    if not text:
        return []

    def length(s: str) -> int:
        return count_tokens(s) if lang == "en" else len(s)

    if not ends_with_sentence_end(text, lang):
        text += "." if lang == "en" else "。"
    sentences: list[str] = []
    for sentence in split_sentences(text, lang):
        if length(sentence) > 2 * token_max_n:
            sentences.extend(_cut_long(sentence, lang, length, 2 * token_max_n, token_max_n))
        else:
            sentences.append(sentence)

    # The reference's greedy merge: flush when adding the next sentence would pass token_max_n
    # and the current piece already has more than token_min_n; a short remainder joins the last.
    segments: list[str] = []
    cur = ""
    for sentence in sentences:
        if length(cur + sentence) > token_max_n and length(cur) > token_min_n:
            segments.append(cur)
            cur = ""
        cur += sentence
    if cur:
        if segments and length(cur) < merge_len:
            segments[-1] += cur
        else:
            segments.append(cur)
    return [s.strip() for s in segments if is_speakable(s)]
