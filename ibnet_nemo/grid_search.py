"""Grid search of CTC beam-search parameters (beam width, LM weight alpha, word bonus beta) on a dev manifest.

Built on the evaluation layer (:mod:`ibnet_nemo.evaluate`): the acoustic model runs once, and its
log-probabilities are cached in a ``.npz`` file (NumPy arrays and strings only, read back with
``allow_pickle=False``) keyed by a hash of the model file and the manifest, so that a second search with other
grid values skips the model. Each grid point is decoded by NeMo's ``pyctcdecode`` strategy.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from nemo.collections.asr.models import EncDecCTCModel
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig
from omegaconf import DictConfig

from ibnet_nemo.data.manifest import write_manifest
from ibnet_nemo.evaluate import decode_and_score, manifest_log_probs, reference_records, transcript_records
from ibnet_nemo.fileio import atomic_path
from ibnet_nemo.inference import check_decoding, load_model

__all__ = ["GridPoint", "GridSearchConfig", "cache_key", "compute_or_load_log_probs", "run_grid_search", "search"]

_HASH_CHUNK_BYTES = 1 << 20


@dataclass
class GridSearchConfig:
    """Options of ``examples/eval_beamsearch_ngram_ctc.py``, with the key names of NeMo's script of that name."""

    nemo_model_file: Optional[str] = None  # a CTC model's .nemo file
    input_manifest: Optional[str] = None  # dev manifest with reference `text`
    kenlm_model_file: Optional[str] = None  # word n-gram LM (.arpa, lower case for lower-case models)
    preds_output_folder: str = "beamsearch_ngram_results"  # results table, best predictions, default cache
    probs_cache_file: Optional[str] = None  # default: <preds_output_folder>/probs_<model+manifest hash>.npz
    acoustic_batch_size: int = 16
    beam_width: list[int] = field(default_factory=lambda: [128])
    beam_alpha: list[float] = field(default_factory=lambda: [1.0])
    beam_beta: list[float] = field(default_factory=lambda: [0.0])
    cuda: Optional[int] = None  # GPU index; -1 for CPU; null: the first GPU when there is one, else CPU
    quantize: Optional[str] = None  # int8: run int8 on the CPU (quantized at load time); null: as saved (fp32)
    debug: bool = False  # let the first failure raise with its traceback instead of recording it


@dataclass(frozen=True)
class GridPoint:
    """One decoding setting and its scores (fractions)."""

    beam_width: int
    alpha: float
    beta: float
    wer: float
    cer: float


def cache_key(*paths: str | os.PathLike) -> str:
    """A short hex digest of the contents of ``paths`` (the model file and the manifest)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def compute_or_load_log_probs(
    model: EncDecCTCModel,
    records: Sequence[dict],
    cache_file: str | os.PathLike,
    key: str,
    batch_size: int,
    debug: bool = False,
) -> tuple[list[Optional[np.ndarray]], list[str]]:
    """Per record, its log-probabilities ``(T', V + 1)`` (None where it failed) and its error ('' where none).

    Read from ``cache_file`` when that file exists and was written for ``key`` and as many records; otherwise
    computed with :func:`~ibnet_nemo.evaluate.manifest_log_probs` and saved there (atomically).
    """
    cache_file = Path(cache_file)
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as cache:
            if str(cache["key"]) == key and cache["errors"].size == len(records):
                errors = [str(e) for e in cache["errors"]]
                print(f"Log-probabilities read from cache {cache_file}")
                return [None if error else cache[f"log_probs_{i}"] for i, error in enumerate(errors)], errors
        print(f"Cache {cache_file} is for another model or manifest: recomputing it")
    log_probs, errors = manifest_log_probs(model, records, batch_size, debug=debug)
    arrays = {f"log_probs_{i}": lp for i, lp in enumerate(log_probs) if lp is not None}
    with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
        np.savez(f, key=np.array(key), errors=np.array(errors, dtype=str), **arrays)
    print(f"Log-probabilities cached in {cache_file}")
    return log_probs, errors


def _check_grid(beam_widths: Sequence[int], alphas: Sequence[float], betas: Sequence[float]) -> None:
    for name, values in (("beam_width", beam_widths), ("beam_alpha", alphas), ("beam_beta", betas)):
        if not values:
            raise ValueError(f"{name} must list at least one value, got {list(values)}")
    if min(beam_widths) < 1:
        raise ValueError(f"beam_width values must be >= 1, got {list(beam_widths)}")


def search(
    model: EncDecCTCModel,
    log_probs: Sequence[Optional[np.ndarray]],
    references: Sequence[str],
    lm_path: str | os.PathLike,
    beam_widths: Sequence[int],
    alphas: Sequence[float],
    betas: Sequence[float],
    batch_size: int,
) -> tuple[list[GridPoint], list[list[Optional[str]]]]:
    """Decode ``log_probs`` at every (beam width, alpha, beta) with NeMo's pyctcdecode strategy and ``lm_path``.

    Args:
        log_probs: per utterance ``(T', V + 1)``, or None for one that failed (left out of the scores); at least
            one must be given.

    Returns:
        The grid points in grid order with their WER and CER against ``references``, and the texts of each
        (None for a failed utterance).

    Raises:
        ValueError: an empty grid list or a beam width < 1.
    """
    _check_grid(beam_widths, alphas, betas)
    decodings = {}
    for beam_width, alpha, beta in itertools.product(beam_widths, alphas, betas):
        decoding = CTCDecodingConfig(strategy="pyctcdecode")
        decoding.beam.beam_size, decoding.beam.ngram_lm_model = int(beam_width), str(lm_path)
        decoding.beam.ngram_lm_alpha, decoding.beam.beam_beta = float(alpha), float(beta)
        decodings[int(beam_width), float(alpha), float(beta)] = decoding
    scores = decode_and_score(model, log_probs, references, decodings, batch_size)
    points = [
        GridPoint(beam_width, alpha, beta, score.wer, score.cer) for (beam_width, alpha, beta), score in scores.items()
    ]
    return points, [score.texts for score in scores.values()]


def run_grid_search(cfg: GridSearchConfig | DictConfig) -> tuple[GridPoint, float, Path]:
    """Everything ``examples/eval_beamsearch_ngram_ctc.py`` does.

    Writes ``grid_search_results.tsv`` (a row for greedy decoding, then one per grid point) and
    ``best_predictions.json`` (the dev records with ``pred_text`` of the best setting, or ``error``) into
    ``cfg.preds_output_folder``.

    Returns:
        The best grid point (lowest WER, first in grid order on ties), the greedy WER on the same utterances,
        and the results table's path.

    Raises:
        FileNotFoundError, ValueError: a problem with the options (found before the acoustic model runs), or no
            utterance could be scored.
    """
    for key in ("nemo_model_file", "input_manifest", "kenlm_model_file"):
        value = getattr(cfg, key)
        if value is None:
            raise ValueError(f"{key} is required")
        if not Path(value).is_file():
            raise FileNotFoundError(f"{key} {value!r}: no such file")
    _check_grid(cfg.beam_width, cfg.beam_alpha, cfg.beam_beta)
    records = reference_records(cfg.input_manifest)
    output_folder = Path(cfg.preds_output_folder)
    key = cache_key(cfg.nemo_model_file, cfg.input_manifest) + ("" if cfg.quantize is None else f"_{cfg.quantize}")
    cache_file = cfg.probs_cache_file or output_folder / f"probs_{key}.npz"

    model = load_model(cfg.nemo_model_file, cfg.cuda, cfg.quantize)
    check_decoding(model, {"strategy": "pyctcdecode", "beam": {"ngram_lm_model": cfg.kenlm_model_file}})
    log_probs, errors = compute_or_load_log_probs(
        model, records, cache_file, key, cfg.acoustic_batch_size, debug=cfg.debug
    )
    failed = sum(bool(error) for error in errors)
    if failed == len(records):
        raise ValueError(f"{cfg.input_manifest}: no utterance could be transcribed (first error: {errors[0]})")
    if failed:
        print(f"{failed} of {len(records)} utterances failed and are left out of the search")
    references = [record["text"] for record in records]

    (greedy,) = decode_and_score(
        model, log_probs, references, {"greedy": CTCDecodingConfig()}, cfg.acoustic_batch_size
    ).values()
    points, texts = search(
        model,
        log_probs,
        references,
        cfg.kenlm_model_file,
        cfg.beam_width,
        cfg.beam_alpha,
        cfg.beam_beta,
        cfg.acoustic_batch_size,
    )
    best_index = min(range(len(points)), key=lambda i: points[i].wer)

    output_folder.mkdir(parents=True, exist_ok=True)
    results_path = output_folder / "grid_search_results.tsv"
    with open(results_path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["decoding", "beam_width", "alpha", "beta", "wer", "cer"])
        writer.writerow(["greedy", "", "", "", f"{greedy.wer:.6f}", f"{greedy.cer:.6f}"])
        for p in points:
            writer.writerow(["beam+lm", p.beam_width, p.alpha, p.beta, f"{p.wer:.6f}", f"{p.cer:.6f}"])
    write_manifest(output_folder / "best_predictions.json", transcript_records(records, texts[best_index], errors))
    return points[best_index], greedy.wer, results_path
