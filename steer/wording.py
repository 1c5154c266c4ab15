"""What the words of a direction's prompts say: which words make the attribute (`attribute_words`,
`attribute_span`, `stated_phrases`), the positives with the attribute left open for the calibration (`open_prompts`),
a prompt with its attribute swapped for another's (`rewrite_attribute`), and whether a user's prompt states a phrase
(`states`: lower case, plurals as singulars). Prompts are compared word by word, in order
(`difflib.SequenceMatcher`), the articles "a" and "an" as one word."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher

from steer.validation import short


def attribute_words(positive: Sequence[str], negative: Sequence[str]) -> list[str]:
    """The words that make the positives' attribute: every positive prompt has them and not every negative one
    does ("a blue sneaker", "a blue bag" vs "a sneaker", "a bag" -> ["blue"]), in the first positive's order. The
    articles "a" and "an" count as one word (they change with the word after them)."""
    shared = set.intersection(*(set(_words(p)) for p in positive))
    in_all_negatives = set.intersection(*(set(_words(p)) for p in negative)) if negative else set()
    attribute = shared - in_all_negatives
    return [w for w in dict.fromkeys(positive[0].split()) if _word(w) in attribute]


def open_prompts(positive: Sequence[str], negative: Sequence[str]) -> list[str]:
    """The positive prompts with the attribute left open, so the model chooses it.

    Where each positive's closest negative is a part of it (the positive is its negative with words added: "an elderly
    man", "an old woman", "an aged man" vs "a man", "a woman") or the negatives pair up with the positives (as many,
    each positive's closest negative a different one: "a blue sneaker" / "a red sneaker"), each positive keeps only the
    words it shares with its own negative, worded as the negative words them ("a man", "a woman", "a man"; "a
    sneaker"). Otherwise the `attribute_words` are dropped from every positive ("a blue sneaker" among "a blue ..." vs
    "a red coat" -> "a sneaker"); where no word is shared by every positive and missing from some negative, each
    positive keeps what it shares with its closest negative. The articles "a" and "an" match each other. A positive with
    nothing to drop (it is one of the negatives) is a ValueError naming it."""
    positive, negative = list(positive), list(negative)
    unique_positive, unique_negative = list(dict.fromkeys(positive)), list(dict.fromkeys(negative))
    closest = {p: negative[_closest(p, negative)] for p in unique_positive} if negative else {}
    attribute = set(attribute_words(positive, negative))
    paired = len(unique_positive) == len(unique_negative) and len(set(closest.values())) == len(unique_positive)
    extended = bool(negative) and all(len(_common_words(n, p)) == len(n.split()) for p, n in closest.items())
    if negative and (paired or extended or not attribute):
        opened = [" ".join(_common_words(closest[p], p)) for p in positive]
    else:
        opened = [_an_before_vowels(w for w in p.split() if w not in attribute) for p in positive]
    for p, o in zip(positive, opened, strict=True):
        if _words(o) == _words(p):
            raise ValueError(f"the positive prompt {p!r} has no words its negative prompts lack, so there is nothing to "
                             "leave open for the calibration: contrast it with the same prompt without the attribute")
    return opened


_ARTICLES = {"an": "a"}


def _word(word: str) -> str:
    """A word as prompts are compared: "an" is "a"."""
    return _ARTICLES.get(word, word)


def _words(prompt: str) -> list[str]:
    return [_word(w) for w in prompt.split()]


def _an_before_vowels(words: Iterable[str]) -> str:
    """The words joined, "an" before a word that no longer starts with a vowel made "a" ("an elderly man" less
    "elderly")."""
    words = list(words)
    return " ".join("a" if w == "an" and i + 1 < len(words) and words[i + 1][:1].lower() not in "aeiou" else w
                    for i, w in enumerate(words))


def _closest(prompt: str, negative: Sequence[str]) -> int:
    """The index of the negative prompt sharing the most words, in order, with ``prompt`` (the first on a tie)."""
    words = _words(prompt)
    ratios = [SequenceMatcher(a=words, b=_words(n), autojunk=False).ratio() for n in negative]
    return max(range(len(negative)), key=ratios.__getitem__)


def _common_words(prompt: str, other: str) -> list[str]:
    """The words of ``prompt`` that match ``other`` in order (`SequenceMatcher`'s equal blocks), as ``prompt`` words
    them."""
    words = prompt.split()
    blocks = SequenceMatcher(a=_words(prompt), b=_words(other), autojunk=False).get_matching_blocks()
    return [w for b in blocks for w in words[b.a : b.a + b.size]]


def attribute_span(prompt: str, negative: Sequence[str]) -> tuple[int, int]:
    """The words ``[start, end)`` of ``prompt`` that make its attribute: where it differs from the most similar of
    the ``negative`` prompts ("a red dress" vs "a red item" -> (2, 3); "a photo of a dog" vs "a photo" -> (2, 5))."""
    closest = negative[_closest(prompt, negative)]
    matcher = SequenceMatcher(a=_words(prompt), b=_words(closest), autojunk=False)
    changed = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    if not changed or changed[0][1] == changed[-1][2]:
        raise ValueError(f"{short(prompt, 80)} has no words its negative prompts lack")
    return changed[0][1], changed[-1][2]


def rewrite_attribute(prompt: str, negative: Sequence[str], like: str, like_negative: Sequence[str]) -> str:
    """``prompt`` with its attribute words (`attribute_span` against ``negative``) replaced by those of ``like``
    (against ``like_negative``): "a red dress" -> "a red ankle boot" for ``like`` = "a blue ankle boot"."""
    start, end = attribute_span(prompt, negative)
    other_start, other_end = attribute_span(like, like_negative)
    words = prompt.split()
    return _an_before_vowels([*words[:start], *like.split()[other_start:other_end], *words[end:]])


WORD_PATTERN = r"[\w'-]+"  # a prompt's words: letters, digits, "_", "'" and "-" ("t-shirt", "men's")


def prompt_words(prompt: str) -> list[str]:
    """A prompt's words as `states` compares them: lower case, punctuation dropped, "an" as "a", a plural as its
    singular ("trousers" as "trouser", "dresses" as "dress"; `singular`)."""
    return ["a" if w == "an" else singular(w) for w in (m.lower() for m in re.findall(WORD_PATTERN, prompt))]


# Plurals the endings rule gets wrong, as prompts use them ("two old men", "a group of children", "three wolves").
IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot", "teeth": "tooth",
    "mice": "mouse", "geese": "goose", "oxen": "ox", "wolves": "wolf", "knives": "knife", "leaves": "leaf",
    "shelves": "shelf", "halves": "half", "wives": "wife", "lives": "life", "loaves": "loaf", "calves": "calf",
    "scarves": "scarf", "thieves": "thief", "elves": "elf", "dwarves": "dwarf", "potatoes": "potato",
    "tomatoes": "tomato", "heroes": "hero", "cacti": "cactus", "fungi": "fungus",
}


def singular(word: str) -> str:
    """``word`` with an English plural ending dropped, the same way for a prompt and for a direction's phrase so that
    "red trousers" states "trouser" and "blue sneakers" "sneaker": "-sses", "-shes", "-ches", "-xes" lose "es"
    ("dresses", "glasses", "watches"), "-ies" becomes "-y", another final "s" goes unless after "s", "u" or "i"
    ("dress", "bus", "iris" stay); common irregular plurals by `IRREGULAR_PLURALS` ("men" -> "man", "people" ->
    "person", "wolves" -> "wolf")."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if len(word) <= 3:
        return word
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


_SINGULAR_TO_IRREGULAR = {v: k for k, v in IRREGULAR_PLURALS.items()}


def plural(word: str) -> str:
    """``word``'s English plural, the inverse of `singular` on the forms it reads: irregular ones by
    `IRREGULAR_PLURALS` ("man" -> "men"), "-s", "-sh", "-ch", "-x", "-z" take "es" ("dress" -> "dresses"), a
    consonant's "-y" becomes "-ies" ("party" -> "parties"), every other word takes "s" ("bag" -> "bags"); an
    upper-case word stays upper case, a capitalised one capitalised."""
    lower = word.lower()
    if lower in _SINGULAR_TO_IRREGULAR:
        out = _SINGULAR_TO_IRREGULAR[lower]
    elif lower.endswith(("s", "sh", "ch", "x", "z")):
        out = lower + "es"
    elif lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        out = lower[:-1] + "ies"
    else:
        out = lower + "s"
    if word.isupper() and len(word) > 1:
        return out.upper()
    return word[:1] + out[1:] if word[:1].isupper() else out


def is_plural(word: str) -> bool:
    """Whether `singular` reads ``word`` as a plural ("dresses", "men"; not "dress", "bus")."""
    return singular(word.lower()) != word.lower()


def states(prompt: str, phrases: Sequence[str]) -> bool:
    """Whether ``prompt`` holds one of ``phrases``, its words one after another ("a red t-shirt, studio light" states
    ["red"]; "an ankle boot" states ["ankle boot"]; "an old man" states ["elderly", "old"])."""
    have = prompt_words(prompt)
    for phrase in phrases:
        want = prompt_words(phrase)
        if want and any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1)):
            return True
    return False


def stated_phrases(positive: Sequence[str], opened: Sequence[str]) -> list[str]:
    """The phrases that state the positives' attribute, each positive's `attribute_span` against the ``opened``
    prompts (the positives with the attribute left open, `open_prompts`), once each in order: "red" for "a red
    t-shirt" against "a t-shirt"; "ankle boot" for "a red ankle boot" against "a red item"."""
    return list(dict.fromkeys(" ".join(p.split()[slice(*attribute_span(p, opened))]) for p in positive))
