"""SentencePiece tokenizers for NeMo's sub-word CTC models (``EncDecCTCModelBPE``), in NeMo's folder layout.

:func:`build_tokenizer` does what NeMo's ``scripts/tokenizers/process_asr_text_tokenizer.py`` does with
``--tokenizer spe`` (that script is not part of the NeMo wheel; ``examples/process_asr_text_tokenizer.py`` is its
stand-in): gather the transcripts of manifests (or take a text file), train a SentencePiece model on them with
NeMo's own ``create_spt_model`` and write ``<data_root>/tokenizer_spe_<type>_v<vocab_size>/`` holding
``tokenizer.model``, ``tokenizer.vocab`` and ``vocab.txt``: the folder a model config's ``tokenizer.dir`` names
(with ``tokenizer.type: bpe``).

Two differences from NeMo's script: the text corpus gathered from manifests is rewritten on every run (NeMo's
reuses a stale ``text_corpus/document.txt``), and a vocabulary larger than the text supports is an error
(SentencePiece, run as NeMo runs it, silently returns fewer pieces than asked for).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.fileio import atomic_path

__all__ = ["SPE_TYPES", "TOKENIZER_FILES", "build_tokenizer", "tokenizer_dir_name", "write_text_corpus"]

#: SentencePiece model types (``--spe_type``).
SPE_TYPES = ("bpe", "unigram", "char", "word")
#: What a tokenizer folder holds: the model NeMo loads, SentencePiece's scored piece list, NeMo's vocabulary.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.vocab", "vocab.txt")
#: Model types whose vocabulary size is the ``vocab_size`` asked for; ``char`` and ``word`` keep at most that many
#: of the text's characters or words.
SIZED_SPE_TYPES = ("bpe", "unigram")


def tokenizer_dir_name(vocab_size: int, spe_type: str, max_sentencepiece_length: int = -1) -> str:
    """NeMo's folder name: ``tokenizer_spe_<type>_v<vocab_size>`` (``_max<N>`` when piece length is limited)."""
    name = f"tokenizer_spe_{spe_type}_v{vocab_size}"
    return f"{name}_max{max_sentencepiece_length}" if max_sentencepiece_length > 0 else name


def write_text_corpus(manifests: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """Write the ``text`` of every record of ``manifests`` to ``path``, one transcript a line.

    Raises:
        FileNotFoundError: a manifest does not exist.
        ValueError: a record has no string ``text`` (the message names the manifest and record).
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for manifest in manifests:
            if not Path(manifest).is_file():
                raise FileNotFoundError(f"manifest not found: {manifest}")
            for number, record in enumerate(read_manifest(manifest), start=1):
                if not isinstance(record.get("text"), str):
                    raise ValueError(f"{manifest}: record {number} has no text")
                out.write(record["text"].replace("\n", " ") + "\n")
    return path


def build_tokenizer(
    data_root: str | os.PathLike,
    vocab_size: int,
    *,
    manifests: Optional[Iterable[str | os.PathLike]] = None,
    data_file: Optional[str | os.PathLike] = None,
    spe_type: str = "bpe",
    lower_case: bool = True,
    character_coverage: float = 1.0,
    sample_size: int = -1,
    max_sentencepiece_length: int = -1,
    bos: bool = False,
    eos: bool = False,
    pad: bool = False,
    train_extremely_large_corpus: bool = False,
) -> Path:
    """Train a SentencePiece tokenizer on transcripts and write it in NeMo's layout under ``data_root``.

    Args:
        data_root: output folder; the tokenizer goes to ``<data_root>/<tokenizer_dir_name(...)>/`` and the text
            gathered from manifests to ``<data_root>/text_corpus/document.txt``.
        vocab_size: number of pieces, ``<unk>`` included (the model's output classes, without the CTC blank).
            For ``char`` and ``word`` the text's characters or words, the most frequent ``vocab_size - 1``
            of them when it has more (the rest become ``<unk>``).
        manifests: NeMo manifests whose ``text`` fields are the training text (exactly one of ``manifests`` and
            ``data_file``).
        data_file: a text file, one sentence a line.
        spe_type: SentencePiece model type, one of :data:`SPE_TYPES`. (Default: bpe)
        lower_case: fold case inside the tokenizer (SentencePiece's ``nmt_nfkc_cf`` rule), so the pieces and
            the model's output are lower case whatever the transcripts' case. (Default: True)
        character_coverage: fraction of the text's characters the base alphabet covers; 1.0 for alphabets of
            under about 1,000 characters, 0.9995 for Chinese or Japanese. (Default: 1.0)
        sample_size: sentences SentencePiece samples from the text, ``-1`` for all. (Default: -1)
        max_sentencepiece_length: longest piece in characters, ``-1`` for no limit. (Default: -1)
        bos: add ``<s>``. (Default: False)
        eos: add ``</s>``. (Default: False)
        pad: add ``<pad>``. (Default: False)
        train_extremely_large_corpus: SentencePiece's setting for corpora that overflow its default limits.
            (Default: False)

    Returns:
        The tokenizer folder, holding :data:`TOKENIZER_FILES`.

    Raises:
        ValueError: an argument is out of range, both or neither of ``manifests`` and ``data_file`` are given,
            or the text supports fewer than ``vocab_size`` pieces (the message gives the most it supports).
        FileNotFoundError: a manifest or ``data_file`` does not exist.
    """
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    if spe_type not in SPE_TYPES:
        raise ValueError(f"spe_type must be one of {', '.join(SPE_TYPES)}, got {spe_type!r}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if not 0.0 < character_coverage <= 1.0:
        raise ValueError(f"character_coverage must lie in (0, 1], got {character_coverage}")
    manifests = [Path(manifest) for manifest in manifests] if manifests is not None else None
    if (manifests is None) == (data_file is None):
        raise ValueError("give exactly one of manifests and data_file")
    data_root = Path(data_root)
    if manifests is not None:
        if not manifests:
            raise ValueError("manifests is empty")
        text_file = write_text_corpus(manifests, data_root / "text_corpus" / "document.txt")
    else:
        text_file = Path(data_file)
        if not text_file.is_file():
            raise FileNotFoundError(f"data_file not found: {text_file}")

    tokenizer_dir = data_root / tokenizer_dir_name(vocab_size, spe_type, max_sentencepiece_length)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:  # create_spt_model keeps an existing model; a rebuild replaces it (as NeMo's script)
        (tokenizer_dir / name).unlink(missing_ok=True)
    create_spt_model(
        data_file=str(text_file),
        vocab_size=vocab_size,
        sample_size=sample_size,
        do_lower_case=lower_case,
        tokenizer_type=spe_type,
        output_dir=str(tokenizer_dir),
        character_coverage=character_coverage,
        train_extremely_large_corpus=train_extremely_large_corpus,
        max_sentencepiece_length=max_sentencepiece_length,
        bos=bos,
        eos=eos,
        pad=pad,
    )
    pieces = _piece_count(tokenizer_dir / "tokenizer.model")
    if spe_type in SIZED_SPE_TYPES and pieces < vocab_size:
        for name in TOKENIZER_FILES:
            (tokenizer_dir / name).unlink(missing_ok=True)
        if not any(tokenizer_dir.iterdir()):
            tokenizer_dir.rmdir()
        raise ValueError(
            f"vocab_size={vocab_size} is too large for this text: SentencePiece made only {pieces} {spe_type} pieces "
            f"from {text_file}; use a vocab_size of at most {pieces}, or more text"
        )
    return tokenizer_dir


def _piece_count(model_file: Path) -> int:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
