"""Word n-gram ARPA language models for CTC beam search: build one from text, lower-case an existing one.

The ``kenlm`` pip package loads and scores ARPA files but ships no ``lmplz``, so :func:`build_arpa` estimates a
small interpolated Kneser-Ney model in pure Python (in memory: meant for corpora of up to a few million words;
for bigger ones use KenLM's own ``lmplz``). :func:`lowercase_arpa` converts an upper-case ARPA such as
LibriSpeech's ``3-gram.pruned.3e-7.arpa(.gz)`` for models that emit lower-case text.

Command line::

    python -m ibnet_nemo.lm.arpa build corpus.txt lm.arpa --order 3
    python -m ibnet_nemo.lm.arpa lowercase 3-gram.pruned.3e-7.arpa.gz librispeech_3gram_lower.arpa
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import sys
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

from ibnet_nemo.fileio import atomic_path

__all__ = ["BOS", "EOS", "UNK", "build_arpa", "lowercase_arpa", "read_arpa_unigrams"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
#: log10 probability ARPA files give ``<s>``: it is a context only, never predicted.
_BOS_LOG10_PROB = -99.0
#: Discount used when an order's count-of-counts cannot estimate one (KenLM's ``--discount_fallback`` D1).
_FALLBACK_DISCOUNT = 0.5


def build_arpa(sentences: Iterable[str], path: str | os.PathLike, order: int = 3) -> Path:
    """Estimate an interpolated Kneser-Ney word n-gram model and write it as an ARPA file.

    Words are the whitespace-separated tokens of each sentence, kept as they are (lower-case the text first for
    a model that emits lower case). Each sentence is padded with ``<s>`` and ``</s>`` as KenLM does; ``<unk>``
    receives the uniform share of the interpolation mass. One absolute discount per order,
    ``D = n1 / (n1 + 2 n2)`` from that order's count-of-counts. The file is written atomically (temporary file,
    then rename) and every unigram line carries a back-off column, which pyctcdecode needs to read unigrams.

    Args:
        sentences: the corpus, one sentence per item (blank items are skipped).
        path: the ARPA file to write; name it ``*.arpa`` for pyctcdecode.
        order: the n-gram order, at least 2. (Default: 3)

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``order`` < 2, a sentence contains ``<s>``, ``</s>`` or ``<unk>``, or the corpus has no words.
    """
    if not isinstance(order, int) or order < 2:
        raise ValueError(f"order must be an integer >= 2 (KenLM loads bigram models and up), got {order!r}")
    counts = _count_ngrams(sentences, order)
    if not counts[0]:
        raise ValueError("the corpus has no words: nothing to estimate an ARPA model from")
    kn_counts = _kneser_ney_counts(counts)
    log10_probs, log10_backoffs = _interpolated_kneser_ney(kn_counts)
    with _atomic_text_writer(Path(path)) as f:
        _write_arpa(f, log10_probs, log10_backoffs)
    return Path(path)


def lowercase_arpa(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy an ARPA file with every word lower-cased, streaming (any size; ``.gz`` read and written by suffix).

    Numbers and section headers are unaffected by lower-casing, so each line is lower-cased whole. The output
    is written atomically (temporary file, then rename).

    Args:
        src: the ARPA file to convert (``.arpa`` or ``.arpa.gz``).
        dst: where to write the lower-case copy; name it ``*.arpa`` for pyctcdecode.

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: ``src`` has no ``\\1-grams:`` section, or two of its unigrams differ only in case (the
            lower-case model would list one n-gram twice).
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"lowercase_arpa needs a destination other than its source, got {src} twice")
    unigram_case_forms: dict[str, str] = {}
    section = None
    with _open_text(src, "r") as fin, _atomic_text_writer(dst) as fout:
        for line in fin:
            lowered = line.lower()
            if line.startswith("\\"):
                section = line.strip()
            elif section == "\\1-grams:" and line.strip():
                word = line.split()[1]
                previous = unigram_case_forms.setdefault(word.lower(), word)
                if previous != word:
                    raise ValueError(f"{src}: unigrams {previous!r} and {word!r} differ only in case")
            fout.write(lowered)
        if not unigram_case_forms:
            raise ValueError(f"{src}: no \\1-grams: section, not an ARPA file")
    return dst


def read_arpa_unigrams(path: str | os.PathLike) -> set[str]:
    """The words of an ARPA file's ``\\1-grams:`` section (reads only up to the end of that section)."""
    words = set()
    in_unigrams = False
    with _open_text(Path(path), "r") as f:
        for line in f:
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line.strip() == "\\1-grams:"
            elif in_unigrams and line.strip():
                words.add(line.split()[1])
    return words


def _count_ngrams(sentences: Iterable[str], order: int) -> list[Counter]:
    """Raw counts of every 1..order-gram of the padded sentences; ``counts[n - 1]`` holds the n-grams."""
    counts = [Counter() for _ in range(order)]
    for number, sentence in enumerate(sentences, start=1):
        words = sentence.split()
        if not words:
            continue
        reserved = {BOS, EOS, UNK}.intersection(words)
        if reserved:
            raise ValueError(f"sentence {number} contains reserved token(s) {sorted(reserved)}: {sentence!r}")
        padded = (BOS, *words, EOS)
        for n in range(1, order + 1):
            for start in range(len(padded) - n + 1):
                ngram = padded[start : start + n]
                if ngram != (BOS,):
                    counts[n - 1][ngram] += 1
    return counts


def _kneser_ney_counts(counts: list[Counter]) -> list[Counter]:
    """Counts each order's probabilities are estimated from.

    The highest order and n-grams starting with ``<s>`` (which have no left context) keep their raw counts;
    every other lower-order n-gram is counted by the number of distinct words seen before it.
    """
    adjusted = [Counter() for _ in counts]
    adjusted[-1] = counts[-1]
    for n in range(len(counts) - 1, 0, -1):
        for ngram in counts[n]:
            adjusted[n - 1][ngram[1:]] += 1
        for ngram, count in counts[n - 1].items():
            if ngram[0] == BOS:
                adjusted[n - 1][ngram] = count
    return adjusted


def _discount(counts: Counter) -> float:
    """``n1 / (n1 + 2 n2)``, falling back to :data:`_FALLBACK_DISCOUNT` where that is not in (0, 1)."""
    count_of_counts = Counter(counts.values())
    n1, n2 = count_of_counts[1], count_of_counts[2]
    discount = n1 / (n1 + 2 * n2) if n1 + n2 else 0.0
    return discount if 0.0 < discount < 1.0 else _FALLBACK_DISCOUNT


def _interpolated_kneser_ney(kn_counts: list[Counter]) -> tuple[list[dict], dict]:
    """log10 probabilities per order and log10 back-off weights per context of interpolated Kneser-Ney.

    ``p(w | h) = max(c(h w) - D, 0) / c(h) + gamma(h) p(w | h[1:])`` with ``gamma(h) = D N1+(h .) / c(h)``,
    the recursion ending in the uniform distribution over the vocabulary (``</s>`` and ``<unk>`` included).
    Every listed n-gram stores its interpolated probability, so the ARPA back-off weight of ``h`` is
    ``gamma(h)``.
    """
    vocabulary_size = len(kn_counts[0]) + 1  # + <unk>
    probs: list[dict] = []
    backoffs: dict[tuple, float] = {}
    for n, counts in enumerate(kn_counts, start=1):
        discount = _discount(counts)
        context_totals: dict[tuple, int] = defaultdict(int)
        context_types: dict[tuple, int] = defaultdict(int)
        for ngram, count in counts.items():
            context_totals[ngram[:-1]] += count
            context_types[ngram[:-1]] += 1
        gamma = {h: discount * context_types[h] / total for h, total in context_totals.items()}
        order_probs = {}
        for ngram, count in counts.items():
            history = ngram[:-1]
            lower = 1.0 / vocabulary_size if n == 1 else probs[n - 2][ngram[1:]]
            order_probs[ngram] = max(count - discount, 0.0) / context_totals[history] + gamma[history] * lower
        if n == 1:
            order_probs[(UNK,)] = gamma[()] / vocabulary_size
        else:
            backoffs.update(gamma)
        probs.append(order_probs)
    return probs, backoffs


def _write_arpa(f: IO[str], probs: list[dict], backoffs: dict) -> None:
    """Write the ARPA text: header of counts, then one section per order, n-grams sorted."""
    unigrams = {**probs[0], (BOS,): None}
    sections = [unigrams, *probs[1:]]
    f.write("\\data\\\n")
    for n, section in enumerate(sections, start=1):
        f.write(f"ngram {n}={len(section)}\n")
    for n, section in enumerate(sections, start=1):
        f.write(f"\n\\{n}-grams:\n")
        for ngram in sorted(section):
            prob = section[ngram]
            log10_prob = _BOS_LOG10_PROB if prob is None else math.log10(prob)
            line = f"{log10_prob:.6f}\t{' '.join(ngram)}"
            if n == 1:
                # pyctcdecode reads a unigram only from a line with three tab-separated fields.
                line += f"\t{math.log10(backoffs.get(ngram, 1.0)):.6f}"
            elif ngram in backoffs:
                line += f"\t{math.log10(backoffs[ngram]):.6f}"
            f.write(line + "\n")
    f.write("\n\\end\\\n")


def _open_text(path: Path, mode: str, gzipped: bool | None = None) -> IO[str]:
    """Open ``path`` as UTF-8 text, through gzip when ``gzipped`` (Default: when its name ends in ``.gz``)."""
    if gzipped if gzipped is not None else path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


@contextmanager
def _atomic_text_writer(path: Path) -> Iterator[IO[str]]:
    """A text file (gzipped when ``path`` ends in ``.gz``) that appears under ``path`` only once complete."""
    with atomic_path(path) as tmp, _open_text(tmp, "w", gzipped=path.suffix == ".gz") as f:
        yield f


def _read_sentences(path: Path) -> Iterator[str]:
    with _open_text(path, "r") as f:
        yield from f


def main(argv: list[str] | None = None) -> int:
    """Command line: ``build CORPUS ARPA [--order N]`` or ``lowercase SRC DST``."""
    parser = argparse.ArgumentParser(prog="python -m ibnet_nemo.lm.arpa", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="estimate a Kneser-Ney word n-gram ARPA from a text corpus")
    build.add_argument("corpus", type=Path, help="text file (or .gz), one sentence per line")
    build.add_argument("arpa", type=Path, help="ARPA file to write (*.arpa)")
    build.add_argument("--order", type=int, default=3, help="n-gram order (default: 3)")
    lower = commands.add_parser("lowercase", help="copy an ARPA (or .arpa.gz) with lower-case words")
    lower.add_argument("src", type=Path, help="ARPA file to convert (.arpa or .arpa.gz)")
    lower.add_argument("dst", type=Path, help="lower-case ARPA to write (*.arpa)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            path = build_arpa(_read_sentences(args.corpus), args.arpa, order=args.order)
            print(f"wrote {args.order}-gram ARPA {path}")
        else:
            path = lowercase_arpa(args.src, args.dst)
            print(f"wrote lower-case ARPA {path}")
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
