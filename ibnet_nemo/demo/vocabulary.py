"""The demo's AN4-style alphanumeric task: its words, random utterances, and what a TTS voice is asked to say.

A *token* is one word of the task as the model writes it (lower-case characters of the 28-label set):
digits and "oh", number words, letter names written as the letter itself ("b"), NATO phonetic alphabet words.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIGITS", "NUMBERS", "LETTERS", "NATO", "VOCABULARY", "random_transcript", "spoken_form", "task_sentences"]

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh")
NUMBERS = (
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "thousand",
)
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
NATO = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
)
#: Every token of the task, in a fixed order.
VOCABULARY = DIGITS + NUMBERS + LETTERS + NATO

# Text the TTS engines pronounce as the token: an upper-case letter is read as its name ("B" -> "bee"), except "A",
# which espeak-ng (and the voices phonemized by it), flite and festival read as the article before another word
# ("A zero" -> "uh zero"); all three say "eigh" as the letter's name.
_SPOKEN_EXCEPTIONS = {"xray": "x-ray", "a": "eigh"}


def spoken_form(transcript: str) -> str:
    """The text a TTS voice is given to say ``transcript`` (a space-separated string of tokens).

    Raises:
        ValueError: a word of ``transcript`` is not in :data:`VOCABULARY`.
    """
    words = transcript.split()
    unknown = [word for word in words if word not in VOCABULARY]
    if unknown:
        raise ValueError(f"transcript {transcript!r} has words outside the task vocabulary: {unknown}")
    return " ".join(_SPOKEN_EXCEPTIONS.get(word, word.upper() if word in LETTERS else word) for word in words)


def random_transcript(rng: np.random.Generator, min_tokens: int = 1, max_tokens: int = 7) -> str:
    """A random utterance of ``min_tokens``..``max_tokens`` tokens drawn uniformly from :data:`VOCABULARY`.

    Args:
        rng: the random generator (the corpus is reproducible from its seed).
        min_tokens: fewest tokens. (Default: 1)
        max_tokens: most tokens. (Default: 7)

    Raises:
        ValueError: ``min_tokens`` < 1 or ``max_tokens`` < ``min_tokens``.
    """
    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got min_tokens={min_tokens}, max_tokens={max_tokens}")
    count = int(rng.integers(min_tokens, max_tokens + 1))
    return " ".join(VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), size=count))


def task_sentences(transcripts: list[str]) -> list[str]:
    """The text a task language model is built from: the training transcripts plus every token alone.

    Single tokens make every word of the vocabulary a unigram even when the training text is small.
    """
    return list(transcripts) + list(VOCABULARY)
