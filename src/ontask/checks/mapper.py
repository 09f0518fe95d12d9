"""From a constraint sentence to the IFEval checkers that can verify it, with their parameters.

The checkers themselves come from a library (`library.py`); this module is only the
mapping. It reads the constraint the way IFEval's prompts state them ("Answer with at
least 300 words", "Do not use any commas", "Wrap your entire response in JSON",
"Your ENTIRE response should be in German") and returns the checker ids and the keyword
arguments of their `build_description`, so `check(id, kwargs, response)` can run.

Rules are regular expressions over the lower-cased text, one small function per checker
family, each returning the specs it recognises. One sentence can hold several checks
("in English, and in all capital letters"). A constraint no rule recognises maps to
nothing: the judge, not code, decides whether it is met.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

LESS, AT_LEAST = "less than", "at least"

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "a single": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "a hundred": 100, "one hundred": 100, "twice": 2, "once": 1, "thrice": 3,
}
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
             "eighth": 8, "ninth": 9, "tenth": 10}
_NUM = r"(\d[\d,]*|" + "|".join(sorted((re.escape(w) for w in _NUMBER_WORDS), key=len, reverse=True)) + r")"

# IFEval's language codes (langdetect's), by the names prompts use.
LANGUAGES = {
    "english": "en", "spanish": "es", "portuguese": "pt", "arabic": "ar", "hindi": "hi", "french": "fr",
    "russian": "ru", "german": "de", "japanese": "ja", "italian": "it", "bengali": "bn", "bangla": "bn",
    "ukrainian": "uk", "thai": "th", "urdu": "ur", "tamil": "ta", "telugu": "te", "bulgarian": "bg",
    "korean": "ko", "polish": "pl", "hebrew": "he", "persian": "fa", "farsi": "fa", "vietnamese": "vi",
    "nepali": "ne", "swahili": "sw", "kannada": "kn", "marathi": "mr", "gujarati": "gu", "punjabi": "pa",
    "malayalam": "ml", "finnish": "fi",
}


@dataclass(frozen=True)
class CheckSpec:
    """One checker to run on a response: IFEval id, its kwargs, and the words that chose it."""

    instruction_id: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    evidence: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"instruction_id": self.instruction_id, "kwargs": self.kwargs}


def number(text: str) -> int | None:
    """'300', '1,000', 'three', 'a single' -> int; None when not a number."""
    t = text.strip().lower()
    if t in _NUMBER_WORDS:
        return _NUMBER_WORDS[t]
    t = t.replace(",", "")
    return int(t) if t.isdigit() else None


def relation(phrase: str, n: int) -> list[tuple[str, int]]:
    """IFEval has two relations, 'less than' and 'at least'; others are written with them."""
    p = " ".join(phrase.lower().split())
    if p in ("less than", "fewer than", "under", "below", "shorter than", "no more than than"):
        return [(LESS, n)]
    if p in ("at most", "no more than", "not more than", "maximum of", "a maximum of", "max", "up to", "within",
             "not exceeding", "not exceed", "no longer than", "fewer than or equal to"):
        return [(LESS, n + 1)]
    if p in ("more than", "over", "above", "longer than", "greater than"):
        return [(AT_LEAST, n + 1)]
    if p in ("exactly", "precisely", "just"):
        return [(AT_LEAST, n), (LESS, n + 1)]
    return [(AT_LEAST, n)]  # at least, no less than, minimum of, N+, N or more


_REL = (r"(less than|fewer than|under|below|shorter than|at most|no more than|not more than|a maximum of|maximum of|"
        r"up to|not exceeding|not exceed|no longer than|more than|over|above|longer than|greater than|exactly|"
        r"precisely|at least|no less than|not less than|a minimum of|minimum of)")


def _counted(text: str, noun: str) -> list[tuple[str, int, str]]:
    """(relation, n, evidence) for '<relation> N <noun>', 'N+ <noun>', 'N <noun> or less', 'A to B <noun>'."""
    out = []
    for m in re.finditer(r"(\d+)\s*(?:to|-|–)\s*(\d+)\s+" + noun, text):  # a range: both bounds
        return [(AT_LEAST, int(m.group(1)), m.group(0)), (LESS, int(m.group(2)) + 1, m.group(0))]
    text = re.sub(_NUM + r"(\s+" + noun + r")\s+or\s+(?:less|fewer)", r"at most \1\2", text)
    text = re.sub(_NUM + r"(\s+" + noun + r")\s+or\s+more", r"at least \1\2", text)
    for m in re.finditer(_REL + r"\s+(?:of\s+)?" + _NUM + r"\s+(?:\w+\s+)?" + noun, text):
        n = number(m.group(2))
        if n is not None:
            out += [(rel, k, m.group(0)) for rel, k in relation(m.group(1), n)]
    if not out:
        for m in re.finditer(_NUM + r"[\s-]*(\+|or more|or fewer|or less|at most|at least)?[\s-]*(?:\w+\s+)?" + noun, text):
            n = number(m.group(1))
            if n is None:
                continue
            tail = (m.group(2) or "").strip()
            rel = {"+": "at least", "or more": "at least", "at least": "at least", "or fewer": "at most",
                   "or less": "at most", "at most": "at most"}.get(tail)
            before = text[max(0, m.start() - 24): m.start()]
            if rel is None:  # a bare number: "within 50 words" is a cap, "a 300 word essay" a floor
                rel = "at most" if re.search(r"(within|limit(?:ed)? to|keep it to|\bin)\s*$", before) else "at least"
            out += [(r, k, m.group(0)) for r, k in relation(rel, n)]
    return out


# -- one function per checker family -----------------------------------------------------------
def _length(t: str, _: str) -> list[CheckSpec]:
    out: list[CheckSpec] = []
    words = _counted(t, r"words?\b")
    if not words:  # "the total number of words ... should be 250 or more"
        m = re.search(r"number of words[^.]{0,60}?\b(?:be|is)\s+" + _REL + r"?\s*" + _NUM + r"\s*(or more|or fewer|or less|\+)?", t)
        if m and number(m.group(2)) is not None:
            rel = {"or more": "at least", "+": "at least", "or fewer": "at most", "or less": "at most"}.get(m.group(3) or "", m.group(1) or "at least")
            words = [(r, k, m.group(0)) for r, k in relation(rel, number(m.group(2)))]
    for rel, n, ev in words:
        out.append(CheckSpec("length_constraints:number_words", {"relation": rel, "num_words": n}, ev))
    for rel, n, ev in _counted(t, r"sentences?\b"):
        out.append(CheckSpec("length_constraints:number_sentences", {"relation": rel, "num_sentences": n}, ev))
    para = re.search(_NUM + r"\s+(?:\w+\s+)?paragraphs?\b", t) or re.search(r"paragraphs?\s*(?:should be|:)?\s*" + _NUM, t)
    if para and (_bounded_above(t, para.start()) or _bounded_below(t, para.start())):
        para = None  # IFEval counts paragraphs exactly
    if para and number(para.group(1)):
        n = number(para.group(1))
        nth = re.search(r"(?:paragraph\s+(?:number\s+)?(\d+|" + "|".join(_ORDINALS) + r")|(\d+)(?:st|nd|rd|th|-?st|-?nd|-?rd|-?th)\s+paragraph|("
                        + "|".join(_ORDINALS) + r")\s+paragraph)", t)
        first = re.search(r"(?:start|begin)s?\s+with\s+(?:the\s+)?(?:word\s+)?[\"'`*]*([a-z0-9\-']+)", t)
        if first and not nth and re.search(r"(last|final) paragraph", t):
            nth = re.search(r"(last|final) paragraph", t)
        if nth and first:
            raw = next(g for g in nth.groups() if g)
            k = n if raw in ("last", "final") else _ORDINALS.get(raw) or number(raw.rstrip("stndrh-"))
            out.append(CheckSpec("length_constraints:nth_paragraph_first_word",
                                 {"num_paragraphs": n, "nth_paragraph": k, "first_word": first.group(1).strip("'")},
                                 para.group(0)))
        else:
            out.append(CheckSpec("length_constraints:number_paragraphs", {"num_paragraphs": n}, para.group(0)))
    elif "***" in t and "******" not in t and re.search(r"separat|divider|format", t):  # ****** splits two responses
        # "Separate A and B with ***" (2 parts), or a template "Part 1 *** Part 2 *** Part 3"
        example = re.split(r"example|format below|following format|exact format", t, maxsplit=1)
        parts = re.search(_NUM + r"\s+(?:\w+\s+)?(?:parts|sections|paragraphs|steps|stanzas|verses)\b", t)
        n = (number(parts.group(1)) if parts and number(parts.group(1)) else
             example[1].count("***") + 1 if len(example) > 1 and "***" in example[1] else 2)
        out.append(CheckSpec("length_constraints:number_paragraphs", {"num_paragraphs": n}, "***"))
    return out


def _format(t: str, original: str) -> list[CheckSpec]:
    out: list[CheckSpec] = []
    bullets = re.search(_NUM + r"\s+(?:\w+\s+){0,3}?bullet(?:\s*points?|s)?\b", t) or re.search(
        r"bullet(?:\s*points?|s)?[^.]{0,20}?\b(?:exactly|of)\s+" + _NUM, t)
    # IFEval's checkers have fixed relations: bullets and paragraphs exactly N, highlights and
    # placeholders at least N. A constraint with another relation ("at most 5 bullet points")
    # is left to the judge rather than checked as something it does not say.
    if bullets and number(bullets.group(1)) is not None and not _bounded_above(t, bullets.start()) \
            and not _bounded_below(t, bullets.start()):
        out.append(CheckSpec("detectable_format:number_bullet_lists", {"num_bullets": number(bullets.group(1))}, bullets.group(0)))
    # markdown highlighting, not "use capitals to highlight key points"
    if re.search(r"italic|\*highlighted|highlight\w*\s+(?:at least\s+)?(?:\w+\s+){0,3}?(?:sections?|parts?|phrases?|text)\b|"
                 r"(?:sections?|parts?|phrases?)\s+(?:\w+\s+){0,2}?highlighted", t) \
            and re.search(r"markdown|\*|italic|highlighted section", t):
        m = re.search(_REL + r"?\s*" + _NUM + r"\s+(?:\w+\s+){0,3}?(?:sections?|parts?|phrases?|words?|highlights?)", t)
        n = number(m.group(2)) if m else 1
        if n is not None and not (m and _bounded_above(t, m.start(2))):
            out.append(CheckSpec("detectable_format:number_highlighted_sections", {"num_highlights": n}, m.group(0) if m else "highlight"))
    sec = re.search(r"(section|part|chapter|paragraph|day|slide|point|scene|step)\s+x\b", t, re.I)
    if sec or re.search(r"mark the beginning of each (section|part)", t):
        n = re.search(_NUM + r"\s+(?:\w+\s+)?(sections?|parts?|chapters?|days?|slides?|scenes?|steps?)\b", t)
        spliter = _original_case_spliter(original, sec.group(1) if sec else "Section")
        if n and number(n.group(1)):
            out.append(CheckSpec("detectable_format:multiple_sections",
                                 {"section_spliter": spliter, "num_sections": number(n.group(1))}, n.group(0)))
    if re.search(r"\bjson\b", t):
        out.append(CheckSpec("detectable_format:json_format", {}, "json"))
    if re.search(r"double angular brackets|<<[^>]*>>|title[^.]{0,40}<<", t):
        out.append(CheckSpec("detectable_format:title", {}, "<<title>>"))
    if re.search(r"my answer is (yes|no|maybe)", t):
        out.append(CheckSpec("detectable_format:constrained_response", {}, "my answer is ..."))
    return out


_ABOVE = r"(?:at most|up to|no more than|not more than|less than|fewer than|under|maximum of|max)\s*$"
_BELOW = r"(?:at least|no less than|not less than|more than|over|minimum of)\s*$"


def _bounded_above(t: str, at: int) -> bool:
    """A cap ("at most 5") just before position `at`."""
    return re.search(_ABOVE, t[max(0, at - 24): at]) is not None


def _bounded_below(t: str, at: int) -> bool:
    return re.search(_BELOW, t[max(0, at - 24): at]) is not None


def _original_case_spliter(original: str, word: str) -> str:
    """The section marker as the prompt writes it ('SECTION', 'Section', 'Day', 'PARAGRAPH')."""
    m = re.search(r"\b(" + re.escape(word) + r")\s+X\b", original, re.I)
    return m.group(1) if m else word.capitalize()


def _quoted(text: str) -> list[str]:
    return [a or b or c for a, b, c in re.findall(r"\"([^\"]+)\"|“([^”]+)”|(?<![a-z])'([^']+)'(?![a-z])", text)]


def _word_list(text: str) -> list[str]:
    """Keywords from 'X, Y and Z' or quoted items; stops at 'in your response' etc."""
    quoted = _quoted(text)
    if quoted:
        return [q.strip() for q in quoted if q.strip()]
    text = re.split(r"\b(?:in|into|within|throughout|anywhere in)\s+(?:the|your)\s+(?:response|answer|reply|output|entire)|"
                    r"\b(?:when|while|as|so|because)\b|[.;:(]", text)[0]
    parts = re.split(r",\s*(?:and\s+|or\s+)?|\s+and\s+|\s+or\s+", text)
    return [p.strip(" *`'\"") for p in parts if p.strip(" *`'\"") and len(p.split()) <= 3]


def _keywords(t: str, original: str) -> list[CheckSpec]:
    out: list[CheckSpec] = []
    t = re.sub(r"\b(\d+) or more times\b", r"at least \1 times", t)
    low_orig = original
    m = re.search(r"(?:do not|don't|never|avoid|without|refrain from|must not|should not|cannot|can't)\s+(?:\w+\s+){0,4}?"
                  r"(?:using|use|include|including|mention|mentioning|say|saying)?\s*(?:any\s+of\s+)?(?:the\s+)?"
                  r"(?:following\s+)?(?:key)?words?\s*:?\s+(.+)", t)
    if not m:
        m = re.search(r"(?:the\s+)?(?:key)?words?\s+(.+?)\s+(?:should|must|may|can)\s*(?:not|never)\s+(?:appear|be used|be included|be mentioned)", t)
    if not m:  # "Do not include 'can' and 'ride'", "Do not say 'yes' or 'no'"
        m = re.search(r"(?:do not|don't|never|avoid|without)\s+(?:\w+\s+){0,2}?(?:include|including|use|using|say|saying|mention|"
                      r"mentioning|write|writing)\s+((?:[\"'“][^\"'”]+[\"'”](?:\s*,\s*|\s+(?:and|or|nor)\s+)?)+)", t)
    if m and "letter" not in m.group(0)[:40] and "comma" not in m.group(0):
        start = m.start(1)
        words = _word_list(low_orig[start:] if len(low_orig) == len(t) else m.group(1))
        if words:
            out.append(CheckSpec("keywords:forbidden_words", {"forbidden_words": words}, m.group(0)[:60]))
    inc = re.search(r"(?:include|includes|including|contain|contains|containing|use|using|mention|incorporate)\s+(?:the\s+)?"
                    r"(?:following\s+)?key\s*words?\s*:?\s+(.+)", t) or re.search(
        r"(?:include|including|contain|use|using|incorporate)\s+(?:the\s+)?words?\s+(.+?)\s+(?:in|into)\s+(?:the|your)\s+(?:response|answer)", t)
    if inc and not (m and inc.start() >= m.start() and inc.start() < m.end()):
        start = inc.start(1)
        words = _word_list(low_orig[start:] if len(low_orig) == len(t) else inc.group(1))
        if words:
            out.append(CheckSpec("keywords:existence", {"keywords": words}, inc.group(0)[:60]))
    times = r"(?:\s+times?\b|(?<=twice)|(?<=once)|(?<=thrice))\s*(or more|or fewer|or less)?"
    freq = re.search(r"(?:the\s+)?(?:word|keyword)\s+[\"'“]?([a-z0-9\-]+)[\"'”]?\s+(?:should|must|needs to|has to)?\s*(?:appears?|be used|occurs?|be mentioned)?\s*"
                     + _REL + r"?\s*" + _NUM + times, t) or re.search(
        r"(?:use|mention|include|repeat)\s+(?:the\s+)?(?:word|keyword)\s+[\"'“]?([a-z0-9\-]+)[\"'”]?\s+" + _REL + r"?\s*" + _NUM + times, t)
    if freq:
        n = number(freq.group(3))
        tail = {"or more": "at least", "or fewer": "at most", "or less": "at most"}.get(freq.group(4) or "")
        if n is not None:
            for rel, k in relation(tail or freq.group(2) or "at least", n):
                out.append(CheckSpec("keywords:frequency", {"keyword": freq.group(1), "frequency": k, "relation": rel}, freq.group(0)))
    letter = re.search(r"letter\s+[\"'“]?([a-z])[\"'”]?\s+(?:should|must|to)?\s*(?:appears?|be used|occurs?)?\s*" + _REL + r"?\s*" + _NUM
                       + r"\s+times?", t)
    banned = re.search(r"(?:do not|don't|never|avoid|without)\s+(?:\w+\s+){0,3}?(?:the\s+)?letter\s+[\"'“]?([a-z])\b", t)
    if banned and not letter:
        out.append(CheckSpec("keywords:letter_frequency", {"letter": banned.group(1), "let_frequency": 1,
                                                           "let_relation": LESS}, banned.group(0)))
    if letter:
        n = number(letter.group(3))
        if n is not None:
            for rel, k in relation(letter.group(2) or "at least", n):
                out.append(CheckSpec("keywords:letter_frequency", {"letter": letter.group(1), "let_frequency": k,
                                                                   "let_relation": rel}, letter.group(0)))
    return out


def _case_and_punctuation(t: str, _: str) -> list[CheckSpec]:
    out: list[CheckSpec] = []
    if re.search(r"\bcommas?\b", t) and re.search(r"(no|not|without|avoid|refrain|never|don't|zero)\b", t):
        out.append(CheckSpec("punctuation:no_comma", {}, "no commas"))
    capital_words = re.search(r"(?:words?|all[- ]caps)[^.]{0,40}?(?:all\s+)?capital(?:ized)?\s+letters?[^.]{0,30}?" + _REL + r"?\s*" + _NUM
                              + r"\s+times?", t) or re.search(r"capital(?:ized)? words?[^.]{0,30}?" + _REL + r"?\s*" + _NUM + r"\s+times?", t)
    if capital_words:
        n = number(capital_words.group(2))
        if n is not None:
            for rel, k in relation(capital_words.group(1) or "at least", n):
                out.append(CheckSpec("change_case:capital_word_frequency", {"capital_frequency": k, "capital_relation": rel},
                                     capital_words.group(0)))
    elif re.search(r"(all|entire|whole)[^.]{0,60}?(capital letters|uppercase|upper case|capitalized|caps)\b", t) or \
            re.search(r"\b(in|using|with) (all )?(capital letters|uppercase|upper case|caps)\b", t):
        out.append(CheckSpec("change_case:english_capital", {}, "all capital letters"))
    if re.search(r"(lowercase|lower case|lower-case|small letters)", t) or re.search(r"no capital letters", t):
        out.append(CheckSpec("change_case:english_lowercase", {}, "all lowercase"))
    return out


def _language(t: str, _: str) -> list[CheckSpec]:
    names = "|".join(LANGUAGES)
    m = re.search(r"\b(" + names + r")\b[^.]{0,30}?\b(language|only|no other)", t) or re.search(
        r"\b(?:in|using|use)\s+(?:the\s+)?(?:\w+\s+)?(" + names + r")\b", t) or re.search(r"language[^.]{0,20}?\b(" + names + r")\b", t)
    if not m:
        return []
    return [CheckSpec("language:response_language", {"language": LANGUAGES[m.group(1)]}, m.group(0))]


def _start_end_content(t: str, original: str) -> list[CheckSpec]:
    out: list[CheckSpec] = []
    end = re.search(r"(?:end|finish|conclude|close)\s+(?:your|the|this)?\s*(?:entire\s+|whole\s+)?(?:response|answer|reply|email|letter|"
                    r"story|essay|poem|song|it)?\s*(?:with|by)\s+(?:the|this|a)?\s*(?:exact\s+)?(?:phrase|sentence|words?|question)?\s*:?\s*", t) or \
        re.search(r"(?:very\s+)?end of (?:your|the) (?:\w+\s+)?(?:response|answer|reply)\s+(?:should|must)\s+(?:read|be)\s*:?\s*", t)
    if end:
        rest = original[end.end():] if len(original) == len(t) else t[end.end():]
        q = _quoted(rest[:200])
        # an unquoted phrase runs to the end of its line, keeping its own final period
        phrase = q[0] if q else re.split(r"(?<=[.!?])\s+(?=[A-Z])|\n", rest.strip())[0].strip()
        if phrase and "p.s" not in phrase.lower():
            out.append(CheckSpec("startend:end_checker", {"end_phrase": phrase.strip()}, end.group(0)))
    if re.search(r"(wrap|enclose|surround|put)[^.]{0,80}?(double quot|quotation marks|in quotes|\"\")", t):
        out.append(CheckSpec("startend:quotation", {}, "double quotation marks"))
    ph = re.search(r"(?:" + _REL + r"\s+)?" + _NUM + r"\s+(?:\w+\s+)?placeholders?", t) or (
        re.search(r"placeholders?[^.]{0,60}?" + _REL + r"?\s*" + _NUM, t))
    if ph:
        n = number(ph.group(2))
        if n is not None and not _bounded_above(t, ph.start(2)) and (ph.group(1) or "at least") not in (
                "at most", "up to", "no more than", "less than", "fewer than", "under", "a maximum of", "maximum of"):
            out.append(CheckSpec("detectable_content:number_placeholders", {"num_placeholders": n}, ph.group(0)))
    elif re.search(r"placeholder|square brackets", t):
        out.append(CheckSpec("detectable_content:number_placeholders", {"num_placeholders": 1}, "placeholder"))
    ps = re.search(r"(p\.\s?p\.\s?s|p\.\s?s\.?)", t)
    if ps and re.search(r"postscript|p\.\s?s|add|end|include", t):
        marker = "P.P.S" if ps.group(1).replace(" ", "").startswith("p.p") else "P.S."
        out.append(CheckSpec("detectable_content:postscript", {"postscript_marker": marker}, ps.group(0)))
    if re.search(r"(two|2) (different|separate|distinct) (responses|answers|versions)|six asterisk|\*{6}", t):
        out.append(CheckSpec("combination:two_responses", {}, "two responses"))
    return out


def _repeat(t: str, original: str, prompt: str | None) -> list[CheckSpec]:
    if not re.search(r"repeat (?:the |this |my |all )?(?:exact |same |above |whole )?(?:request|question|prompt|instruction|sentence|query|text)", t):
        return []
    to_repeat = ""
    if prompt:
        # where the constraint sits in the prompt as written (its line breaks kept: the
        # checker compares the response's start with this text)
        words = original.split()
        at = re.search(r"\s+".join(map(re.escape, words)), prompt) if words else None
        if at and re.search(r"\b(below|following)\b", t):  # the request comes after this sentence
            to_repeat = prompt[at.end():].strip() or prompt.strip()
        elif at and at.start() > 0:
            to_repeat = prompt[: at.start()].strip()
        else:
            to_repeat = prompt.strip()
    return [CheckSpec("combination:repeat_prompt", {"prompt_to_repeat": to_repeat}, "repeat the request")]


_RULES: list[Callable[[str, str], list[CheckSpec]]] = [_length, _format, _keywords, _case_and_punctuation, _language,
                                                       _start_end_content]


def map_constraint(text: str, prompt: str | None = None) -> list[CheckSpec]:
    """Checkers (with parameters) that verify this constraint sentence; [] when code cannot.

    `prompt` is the whole instruction the constraint belongs to; only `repeat_prompt` needs
    it (the part to repeat is the request before the constraint).
    """
    original = " ".join(text.split())
    t = original.lower()
    found: list[CheckSpec] = []
    for rule in _RULES:
        found += rule(t, original)
    found += _repeat(t, original, prompt)
    return _dedupe(found)


def _dedupe(specs: list[CheckSpec]) -> list[CheckSpec]:
    out, seen = [], set()
    for s in specs:
        key = (s.instruction_id, repr(sorted(s.kwargs.items())))
        if key not in seen:
            seen.add(key)
            out.append(s)
    # "N paragraphs ... first word" is one nth-paragraph check, not also a paragraph count.
    ids = {s.instruction_id for s in out}
    if "length_constraints:nth_paragraph_first_word" in ids:
        out = [s for s in out if s.instruction_id != "length_constraints:number_paragraphs"]
    # "words in all capital letters ... N times" is a frequency, not "all capitals".
    if "change_case:capital_word_frequency" in ids:
        out = [s for s in out if s.instruction_id != "change_case:english_capital"]
    return out
