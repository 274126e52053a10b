"""Yes/no questions about an object: how they are asked, how their answers read, and which prompts are one.

A leaf: the schema (allowed parsers and splits), the benchmarks (POPE), the search, curate, the scoring
commands and the toy world all read these facts from here, so each is written once.

    task_of("Is there a dog in the image? Please answer yes or no.")   # "yes_no"
    question_object("Is there an apple in the imange?")                 # "apple"
    parse_answer("Yes, there is no cat.")                               # "yes"

Answer parsers (the conventions are incompatible; the one used is recorded with POPE's metrics):
- llava (original POPE / LLaVA eval_pope.py): text before the first ".", commas removed, split on
  spaces; "No", "no" or "not" among the tokens -> no, else yes (empty answers are yes).
- vlmevalkit (YOrN_Extraction): lower-case, punctuation to spaces, split; yes without no -> yes,
  no without yes -> no, else unknown (scored as not-yes).
- default: the first word of the lower-cased answer that is "yes" or "no" decides; no such word ->
  unknown (scored as no). "Yes, there is no..." is yes; "There is a dog." is unknown.
"""

from __future__ import annotations

import re

from .errors import InputError

TEMPLATE = "Is there a {} in the image?"
"""POPE's question about an object."""
SUFFIX = " Please answer yes or no."
"""The instruction POPE (and the toy LLaVA's training) appends to the question."""
SPLITS = ("random", "popular", "adversarial")
"""POPE's splits: how the absent object of a question is drawn."""
PARSERS = ("default", "llava", "vlmevalkit")
"""The answer parsers (module docstring)."""
CAPTION, YES_NO = "caption", "yes_no"
"""The two tasks a prompt can be: describe the image, or answer whether an object is in it."""
_OBJECT = re.compile(r"is there an? (.+?) in the ima?n?ge\??", re.IGNORECASE)


def question_object(text: str) -> str | None:
    """The object asked about ("Is there an apple in the imange?" -> apple); None when the text asks no such one."""
    m = _OBJECT.search(text or "")
    return m.group(1) if m else None


def task_of(text: str) -> str:
    """The task of a prompt text: YES_NO when it asks whether an object is in the image, else CAPTION."""
    return YES_NO if question_object(text) is not None else CAPTION


def with_article(template: str, name: str) -> str:
    """The template with `name` in it, its "a {}" turned into "an {}" before a vowel ("Is there an apple ...")."""
    if name[:1].lower() in ("a", "e", "i", "o", "u"):
        template = template.replace("a {}", "an {}", 1).replace("A {}", "An {}", 1)
    return template.format(name)


def parse_llava(text: str) -> str:
    """LLaVA's eval_pope.py rule: 'no'/'not' before the first '.' means no, anything else yes."""
    text = text.split(".")[0] if "." in text else text
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def parse_vlmevalkit(text: str) -> str:
    """VLMEvalKit's YOrN_Extraction: yes without no, no without yes, else unknown."""
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    if "yes" in words and "no" not in words:
        return "yes"
    if "no" in words and "yes" not in words:
        return "no"
    return "unknown"


def parse_default(text: str) -> str:
    """The first word that is 'yes' or 'no' decides; none: unknown (scored as no)."""
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in ("yes", "no"):
            return word
    return "unknown"


def parse_answer(text: str, parser: str = "default") -> str:
    """'yes', 'no' or 'unknown' for an answer text under the named parser."""
    funcs = {"default": parse_default, "llava": parse_llava, "vlmevalkit": parse_vlmevalkit}
    if parser not in funcs:
        raise InputError(f"unknown POPE parser {parser!r}; choose from {', '.join(PARSERS)}")
    return funcs[parser](text or "")
