"""ARPA tooling: a Kneser-Ney model KenLM loads and that normalizes, the lower-case converter, the command line."""

from __future__ import annotations

import gzip
import math

import kenlm
import pytest

from ibnet_nemo.lm.arpa import build_arpa, lowercase_arpa, main, read_arpa_unigrams

CORPUS = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the cat ate", "dogs bark"]


def _next_word_distribution(model: kenlm.Model, context: list[str], words: list[str]) -> float:
    """Sum over ``words`` of p(word | context); the context starts at ``<s>`` when ``context`` is empty."""
    state = kenlm.State()
    model.BeginSentenceWrite(state) if not context else model.NullContextWrite(state)
    for word in context:
        out = kenlm.State()
        model.BaseScore(state, word, out)
        state = out
    return sum(10 ** model.BaseScore(state, word, kenlm.State()) for word in words)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kenlm_loads_the_model_and_every_context_distribution_sums_to_one(order, tmp_path):
    path = build_arpa(CORPUS, tmp_path / "lm.arpa", order=order)
    model = kenlm.Model(str(path))
    assert model.order == order
    outcomes = sorted({w for s in CORPUS for w in s.split()}) + ["</s>", "<unk>"]
    for context in ([], ["the"], ["the", "cat"], ["sat", "on", "the"], ["unseen"], ["a", "unseen"]):
        assert _next_word_distribution(model, context, outcomes) == pytest.approx(1.0, abs=1e-5), context
    assert model.score("the cat sat on the mat") > model.score("mat the on sat cat the")
    assert model.score("the cat sat") > model.score("the cat flew")  # seen beats unseen


def test_interpolated_kneser_ney_values_worked_by_hand(tmp_path):
    """Corpus "a b", "a c", order 2.

    Bigrams (raw): <s> a:2, a b:1, a c:1, b </s>:1, c </s>:1, so D2 = n1/(n1 + 2 n2) = 4/6.
    Unigram continuation counts: a:1 (<s>), b:1, c:1, </s>:2 (b, c); total 5, D1 = 3/5, gamma = 0.6 * 4/5 = 0.48,
    vocabulary a b c </s> <unk> (5): p(a) = (1 - 0.6)/5 + 0.48/5 = 0.176, p(</s>) = 1.4/5 + 0.096 = 0.376,
    p(<unk>) = 0.096. p(b | a) = (1 - 2/3)/2 + gamma(a) p(b) with gamma(a) = (2/3) * 2/2: 1/6 + 2/3 * 0.176.
    """
    model = kenlm.Model(str(build_arpa(["a b", "a c"], tmp_path / "lm.arpa", order=2)))
    assert model.score("a", bos=False, eos=False) == pytest.approx(math.log10(0.176), abs=1e-5)
    assert model.score("zzz", bos=False, eos=False) == pytest.approx(math.log10(0.096), abs=1e-5)
    assert model.score("a b", bos=False, eos=False) == pytest.approx(
        math.log10(0.176) + math.log10(1 / 6 + 2 / 3 * 0.176), abs=1e-5
    )
    text = (tmp_path / "lm.arpa").read_text()
    assert "ngram 1=6\nngram 2=5\n" in text  # a b c </s> <s> <unk>; the five bigrams above
    assert read_arpa_unigrams(tmp_path / "lm.arpa") == {"a", "b", "c", "</s>", "<s>", "<unk>"}


def test_build_arpa_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="order must be an integer >= 2.*got 1"):
        build_arpa(CORPUS, tmp_path / "lm.arpa", order=1)
    with pytest.raises(ValueError, match="no words"):
        build_arpa(["", "  "], tmp_path / "lm.arpa")
    with pytest.raises(ValueError, match=r"sentence 2 contains reserved token\(s\) \['</s>'\]"):
        build_arpa(["a b", "a </s> b"], tmp_path / "lm.arpa")
    assert not (tmp_path / "lm.arpa").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_lowercase_arpa_scores_lower_case_text_as_the_original_scored_upper_case(tmp_path):
    upper = build_arpa([s.upper() for s in CORPUS], tmp_path / "upper.arpa.gz")
    assert gzip.open(upper, "rt").readline() == "\\data\\\n"  # written gzipped, by suffix
    lower = lowercase_arpa(upper, tmp_path / "lower.arpa")
    original, converted = kenlm.Model(str(upper)), kenlm.Model(str(lower))
    for sentence in ["the cat sat on the mat", "dogs bark", "a cat flew", "zebra"]:
        assert converted.score(sentence) == pytest.approx(original.score(sentence.upper()), abs=1e-6)
    assert converted.score("the cat") > converted.score("THE CAT")  # upper case is now unknown
    assert read_arpa_unigrams(lower) == {w.lower() for w in read_arpa_unigrams(upper)}


def test_lowercase_arpa_refuses_words_that_differ_only_in_case_and_non_arpa_files(tmp_path):
    mixed = build_arpa(["The cat", "the cat"], tmp_path / "mixed.arpa")
    with pytest.raises(ValueError, match="unigrams 'The' and 'the' differ only in case"):
        lowercase_arpa(mixed, tmp_path / "out.arpa")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"no \\1-grams: section"):
        lowercase_arpa(tmp_path / "notes.txt", tmp_path / "out.arpa")
    assert not (tmp_path / "out.arpa").exists()


def test_command_line_builds_and_converts(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("\n".join(s.upper() for s in CORPUS) + "\n")
    assert main(["build", str(tmp_path / "corpus.txt"), str(tmp_path / "upper.arpa"), "--order", "3"]) == 0
    assert main(["lowercase", str(tmp_path / "upper.arpa"), str(tmp_path / "lower.arpa")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote 3-gram ARPA {tmp_path / 'upper.arpa'}",
        f"wrote lower-case ARPA {tmp_path / 'lower.arpa'}",
    ]
    assert kenlm.Model(str(tmp_path / "lower.arpa")).order == 3
    assert main(["build", str(tmp_path / "missing.txt"), str(tmp_path / "x.arpa")]) == 1
    assert "error: [Errno 2] No such file or directory" in capsys.readouterr().err
