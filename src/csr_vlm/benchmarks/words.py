"""English words for CHAIR, offline: a Treebank-style regex tokeniser and a rule-based singulariser.

The original CHAIR script uses nltk's `word_tokenize` and `pattern.en.singularize`, which need
downloaded data; these do the same job with no download:
- `tokenize`: sentences split at . ! ? first; words (hyphenated words stay whole, as in nltk),
  punctuation, and the clitics 's / n't / 're ... split off (nltk's Treebank rules).
- `singularize`: rules (men->man, ies->y, ves->f for a known list, (ss|us|x|ch|sh|z)es->drop es,
  other s->drop s) plus irregulars (mice, geese, people, ...). Words ending in ss/us/is stay ("glass",
  "bus"); unlike pattern.en, "glass" never becomes "glas".
"""

from __future__ import annotations

import re

_IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "mice": "mouse", "geese": "goose",
    "teeth": "tooth", "feet": "foot", "oxen": "ox", "dice": "die", "lice": "louse", "is": "is", "was": "was",
}
_UNINFLECTED = {"sheep", "deer", "fish", "bison", "moose", "series", "species", "news", "aircraft", "scissors",
                "pants", "jeans", "shorts", "trousers", "clothes", "this", "has", "does", "its"}
_F_PLURALS = {"knives": "knife", "wives": "wife", "lives": "life", "calves": "calf", "halves": "half",
              "loaves": "loaf", "shelves": "shelf", "wolves": "wolf", "scarves": "scarf", "leaves": "leaf",
              "thieves": "thief", "selves": "self", "elves": "elf", "hooves": "hoof"}
_IE_NOUNS = {"cookie", "movie", "brownie", "zombie", "hippie", "rookie", "selfie", "hoodie", "goalie", "collie",
             "doggie", "birdie", "veggie", "smoothie", "pie", "tie", "lie", "die", "bootie", "beanie", "prairie"}
_O_ES = {"tomato", "potato", "hero", "buffalo", "volcano", "mango", "echo", "torpedo", "mosquito", "domino",
         "cargo", "tornado", "flamingo"}
_SES_KEEP_E = ("ouse", "ase", "ose", "urse", "ise", "ense", "apse", "eese", "ulse", "anse", "ease", "orse", "oise")
_CHE_WORDS = {"headaches", "mustaches", "moustaches", "niches", "caches", "avalanches", "quiches", "cliches"}

_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, split after . ! ? followed by white space."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens in reading order, punctuation as separate tokens."""
    return [token for token, _, _ in token_spans(text)]


def token_spans(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) per token of `tokenize`, with the token's character span in the original text.

    Tokens never cross white space, so splitting into sentences first would give the same tokens; the
    text is lower-cased one character at a time so that every character of the lowered text knows where
    it came from."""
    if text.isascii():  # one character in, one out
        flat, origin = text.lower(), list(range(len(text)))
    else:
        lowered: list[str] = []
        origin = []
        for i, ch in enumerate(text):
            low = ch.lower()
            lowered.append(low)
            origin.extend([i] * len(low))
        flat = "".join(lowered)
    spaced: list[str] = []
    where: list[int] = []
    last = 0
    for m in _CLITIC.finditer(flat):  # a clitic becomes its own token: a space goes before it
        spaced.append(flat[last : m.start()] + " ")
        where.extend(origin[last : m.start()] + [origin[m.start()]])
        last = m.start()
    spaced.append(flat[last:])
    where.extend(origin[last:])
    joined = "".join(spaced)
    return [(m.group(), where[m.start()], where[m.end() - 1] + 1) for m in _TOKEN.finditer(joined)]


def singularize(word: str) -> str:
    """Rule-based English singular of a lower-case noun (see the module docstring)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("men") and len(word) > 4 and word not in ("abdomen", "specimen", "stamen"):
        return word[:-3] + "man"
    if len(word) <= 3 or word in _UNINFLECTED or not word.endswith("s") or not word[-2].isalpha():
        return word
    if word.endswith(("ss", "us", "is")):
        return word
    if word in _F_PLURALS:
        return _F_PLURALS[word]
    if word.endswith("ies"):
        return word[:-1] if word[:-1] in _IE_NOUNS or len(word) <= 4 else word[:-3] + "y"
    if word.endswith("oes"):
        return word[:-2] if word[:-2] in _O_ES else word[:-1]
    if word.endswith("ses"):
        return word[:-1] if word[:-1].endswith(_SES_KEEP_E) else word[:-2]
    if word.endswith(("xes", "shes", "zzes")):
        return word[:-2] if not word.endswith("zzes") else word[:-3]
    if word.endswith("ches"):
        return word[:-1] if word in _CHE_WORDS else word[:-2]
    return word[:-1]
