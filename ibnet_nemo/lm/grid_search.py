"""Grid search of CTC beam-search parameters (beam width, LM weight alpha, word bonus beta) on a dev manifest.

The acoustic model runs once: its log-probabilities are cached in a ``.npz`` file (NumPy arrays and strings
only, read back with ``allow_pickle=False``) keyed by a hash of the model file and the manifest, so that a second
search with other grid values skips the model. Each grid point is decoded by NeMo's ``pyctcdecode`` strategy.
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
from tqdm.auto import tqdm

from ibnet_nemo.data.manifest import write_manifest
from ibnet_nemo.fileio import atomic_path
from ibnet_nemo.evaluate import error_rates, reference_records
from ibnet_nemo.transcribe import decode_log_probs, iter_log_probs, load_model, set_decoding

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
    model: EncDecCTCModel, records: Sequence[dict], cache_file: str | os.PathLike, key: str, batch_size: int,
    debug: bool = False,
) -> tuple[list[Optional[np.ndarray]], list[str]]:
    """Per record, its log-probabilities ``(T', V + 1)`` (None where it failed) and its error ('' where none).

    Read from ``cache_file`` when that file exists and was written for ``key`` and as many records; otherwise
    computed with :func:`~ibnet_nemo.transcribe.iter_log_probs` and saved there (atomically).
    """
    cache_file = Path(cache_file)
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as cache:
            if str(cache["key"]) == key and cache["errors"].size == len(records):
                errors = [str(e) for e in cache["errors"]]
                print(f"Log-probabilities read from cache {cache_file}")
                return [None if error else cache[f"log_probs_{i}"] for i, error in enumerate(errors)], errors
        print(f"Cache {cache_file} is for another model or manifest: recomputing it")
    log_probs, errors = [], []
    with tqdm(total=len(records), desc="Acoustic model") as bar:
        for batch in iter_log_probs(model, records, batch_size, debug=debug):
            for _, outcome in batch:
                good = isinstance(outcome, np.ndarray)
                log_probs.append(outcome if good else None)
                errors.append("" if good else str(outcome))
            bar.update(len(batch))
    arrays = {f"log_probs_{i}": lp for i, lp in enumerate(log_probs) if lp is not None}
    with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
        np.savez(f, key=np.array(key), errors=np.array(errors, dtype=str), **arrays)
    print(f"Log-probabilities cached in {cache_file}")
    return log_probs, errors


def _decode_all(model: EncDecCTCModel, log_probs: Sequence[np.ndarray], batch_size: int) -> list[str]:
    return [text for start in range(0, len(log_probs), batch_size)
            for text in decode_log_probs(model, log_probs[start : start + batch_size])]


def search(
    model: EncDecCTCModel,
    log_probs: Sequence[np.ndarray],
    references: Sequence[str],
    lm_path: str | os.PathLike,
    beam_widths: Sequence[int],
    alphas: Sequence[float],
    betas: Sequence[float],
    batch_size: int,
) -> tuple[list[GridPoint], list[list[str]]]:
    """Decode ``log_probs`` at every (beam width, alpha, beta) with NeMo's pyctcdecode strategy and ``lm_path``.

    Returns:
        The grid points in grid order with their WER and CER against ``references``, and the texts of each.

    Raises:
        ValueError: an empty grid list or a beam width < 1.
    """
    for name, values in (("beam_width", beam_widths), ("beam_alpha", alphas), ("beam_beta", betas)):
        if not values:
            raise ValueError(f"{name} must list at least one value, got {list(values)}")
    if min(beam_widths) < 1:
        raise ValueError(f"beam_width values must be >= 1, got {list(beam_widths)}")
    points, texts = [], []
    grid = list(itertools.product(beam_widths, alphas, betas))
    for beam_width, alpha, beta in tqdm(grid, desc="Grid search"):
        decoding = CTCDecodingConfig(strategy="pyctcdecode")
        decoding.beam.beam_size, decoding.beam.ngram_lm_model = int(beam_width), str(lm_path)
        decoding.beam.ngram_lm_alpha, decoding.beam.beam_beta = float(alpha), float(beta)
        set_decoding(model, decoding)
        hypotheses = _decode_all(model, log_probs, batch_size)
        wer, cer = error_rates(hypotheses, references)
        points.append(GridPoint(int(beam_width), float(alpha), float(beta), wer, cer))
        texts.append(hypotheses)
    return points, texts


def run_grid_search(cfg: GridSearchConfig | DictConfig) -> tuple[GridPoint, float, Path]:
    """Everything ``examples/eval_beamsearch_ngram_ctc.py`` does.

    Writes ``grid_search_results.tsv`` (a row for greedy decoding, then one per grid point) and
    ``best_predictions.json`` (the dev records with ``pred_text`` of the best setting, or ``error``) into
    ``cfg.preds_output_folder``.

    Returns:
        The best grid point (lowest WER, first in grid order on ties), the greedy WER on the same utterances,
        and the results table's path.

    Raises:
        FileNotFoundError, ValueError: a problem with the options, or no utterance could be scored.
    """
    for key in ("nemo_model_file", "input_manifest", "kenlm_model_file"):
        value = getattr(cfg, key)
        if value is None:
            raise ValueError(f"{key} is required")
        if not Path(value).is_file():
            raise FileNotFoundError(f"{key} {value!r}: no such file")
    records = reference_records(cfg.input_manifest)
    output_folder = Path(cfg.preds_output_folder)
    key = cache_key(cfg.nemo_model_file, cfg.input_manifest)
    cache_file = cfg.probs_cache_file or output_folder / f"probs_{key}.npz"

    model = load_model(cfg.nemo_model_file, cfg.cuda)
    log_probs, errors = compute_or_load_log_probs(model, records, cache_file, key, cfg.acoustic_batch_size,
                                                  debug=cfg.debug)
    scored = [i for i, error in enumerate(errors) if not error]
    if not scored:
        raise ValueError(f"{cfg.input_manifest}: no utterance could be transcribed (first error: {errors[0]})")
    if len(scored) < len(records):
        print(f"{len(records) - len(scored)} of {len(records)} utterances failed and are left out of the search")
    scored_log_probs = [log_probs[i] for i in scored]
    references = [records[i]["text"] for i in scored]

    set_decoding(model, CTCDecodingConfig())
    greedy_wer, greedy_cer = error_rates(_decode_all(model, scored_log_probs, cfg.acoustic_batch_size), references)
    points, texts = search(model, scored_log_probs, references, cfg.kenlm_model_file, cfg.beam_width,
                           cfg.beam_alpha, cfg.beam_beta, cfg.acoustic_batch_size)
    best_index = min(range(len(points)), key=lambda i: points[i].wer)

    output_folder.mkdir(parents=True, exist_ok=True)
    results_path = output_folder / "grid_search_results.tsv"
    with open(results_path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["decoding", "beam_width", "alpha", "beta", "wer", "cer"])
        writer.writerow(["greedy", "", "", "", f"{greedy_wer:.6f}", f"{greedy_cer:.6f}"])
        for p in points:
            writer.writerow(["beam+lm", p.beam_width, p.alpha, p.beta, f"{p.wer:.6f}", f"{p.cer:.6f}"])
    best_texts = dict(zip(scored, texts[best_index]))
    write_manifest(output_folder / "best_predictions.json",
                   ({**record, "pred_text": best_texts[i]} if i in best_texts else {**record, "error": errors[i]}
                    for i, record in enumerate(records)))
    return points[best_index], greedy_wer, results_path
