"""The evaluation layer: a manifest's CTC log-probabilities computed once, then decoded several ways and scored.

:func:`manifest_log_probs` runs the acoustic model over the records once (a broken input gets its one-line error
instead, as in transcription); :func:`decode_and_score` decodes those log-probabilities with each of several
decoding configs and scores each with NeMo's ``word_error_rate`` (WER and CER) against the references. Every
evaluation of the package is built on these two: :func:`run_evaluation` (``examples/speech_to_text_eval.py``, one
decoding), the beam-search grid search (:mod:`ibnet_nemo.grid_search`) and the demo's WER table
(:func:`ibnet_nemo.demo.pipeline.evaluate_model`, greedy and with the task LM).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np
from nemo.collections.asr.metrics.wer import word_error_rate
from nemo.collections.asr.models import EncDecCTCModel
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ibnet_nemo.data.manifest import write_manifest
from ibnet_nemo.inference import (
    Chunking,
    DecodingConfig,
    check_decoding,
    decode_log_probs,
    iter_log_probs,
    load_model,
    set_decoding,
)
from ibnet_nemo.transcribe import ModelOptions, input_records, output_record

__all__ = [
    "DecodingScore",
    "EvaluationConfig",
    "EvaluationResult",
    "decode_and_score",
    "error_rates",
    "manifest_log_probs",
    "metrics_path",
    "reference_records",
    "run_evaluation",
    "transcript_records",
]


@dataclass
class EvaluationConfig(ModelOptions):
    """Options of ``examples/speech_to_text_eval.py``, with NeMo's key names."""

    dataset_manifest: Optional[str] = None  # a NeMo manifest whose records carry the reference `text`
    output_filename: str = "evaluation_transcripts.json"  # transcripts; metrics go to <stem>_metrics.json


@dataclass
class EvaluationResult:
    """Scores of one evaluation; ``wer`` and ``cer`` are fractions over the ``scored`` utterances (None if none)."""

    wer: Optional[float]
    cer: Optional[float]
    scored: int
    failed: int
    transcripts: str
    metrics: str

    def __str__(self) -> str:
        failed = f", {self.failed} failed and not scored" if self.failed else ""
        scores = f"WER {100 * self.wer:.2f}%  CER {100 * self.cer:.2f}%" if self.scored else "No score"
        return (
            f"{scores}  over {self.scored} utterances{failed}.\n"
            f"Transcripts: {self.transcripts}\nMetrics: {self.metrics}"
        )


@dataclass(frozen=True)
class DecodingScore:
    """One decoding of a manifest's log-probabilities.

    Args:
        texts: per record its text, in record order; None where the record has no log-probabilities.
        wer: word error rate (a fraction) over the records with a text; None when no record has one.
        cer: character error rate, likewise.
    """

    texts: list[Optional[str]]
    wer: Optional[float]
    cer: Optional[float]


def error_rates(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """``(WER, CER)`` of ``hypotheses`` against ``references`` (NeMo's ``word_error_rate``)."""
    return (
        word_error_rate(list(hypotheses), list(references)),
        word_error_rate(list(hypotheses), list(references), use_cer=True),
    )


def reference_records(manifest: Optional[str | os.PathLike]) -> list[dict]:
    """The records of a manifest to score (see :func:`~ibnet_nemo.transcribe.input_records`).

    Raises:
        ValueError: ``manifest`` is None or unreadable, or a record has no reference ``text``.
    """
    if manifest is None:
        raise ValueError("dataset_manifest is required (a NeMo manifest with reference text)")
    records = input_records(dataset_manifest=manifest)
    for number, record in enumerate(records, start=1):
        if not isinstance(record.get("text"), str):
            raise ValueError(f"{manifest}: record {number} has no reference text field")
    return records


def manifest_log_probs(
    model: EncDecCTCModel,
    records: Sequence[dict],
    batch_size: int,
    debug: bool = False,
    chunking: Optional[Chunking] = None,
) -> tuple[list[Optional[np.ndarray]], list[str]]:
    """Run the acoustic model once over ``records`` (:func:`~ibnet_nemo.inference.iter_log_probs`, long inputs
    chunked as ``chunking`` says).

    A long input damaged part-way counts as failed: its reference covers the whole recording.

    Returns:
        Per record, its log-probabilities ``(T', V + 1)`` (None where it failed), and its one-line error ('' where
        none), in record order.
    """
    log_probs, errors = [], []
    with tqdm(total=len(records), desc="Acoustic model") as bar:
        for batch in iter_log_probs(model, records, batch_size, debug=debug, chunking=chunking):
            for _, outcome in batch:
                good = isinstance(outcome, np.ndarray)
                log_probs.append(outcome if good else None)
                errors.append("" if good else str(outcome))
            bar.update(len(batch))
    return log_probs, errors


def decode_and_score(
    model: EncDecCTCModel,
    log_probs: Sequence[Optional[np.ndarray]],
    references: Sequence[str],
    decodings: Mapping[Hashable, DecodingConfig],
    batch_size: int,
) -> dict[Hashable, DecodingScore]:
    """Decode ``log_probs`` with each of ``decodings`` in turn and score each against ``references``.

    Args:
        model: the CTC model the log-probabilities came from; left set to the last decoding.
        log_probs: per record ``(T', V + 1)``, or None for a record that failed (it gets no text and no score).
        references: per record its reference text.
        decodings: decoding configs (see :func:`~ibnet_nemo.inference.set_decoding`), each under a name or key.
        batch_size: utterances decoded at once, at least 1.

    Returns:
        ``{key: DecodingScore}`` in the order of ``decodings``.

    Raises:
        ValueError: ``log_probs`` and ``references`` differ in length, ``batch_size`` < 1, or a decoding's LM is
            refused (:func:`~ibnet_nemo.inference.check_decoding`).
    """
    if len(log_probs) != len(references):
        raise ValueError(f"{len(log_probs)} log-probabilities for {len(references)} references")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scored = [i for i, utterance in enumerate(log_probs) if utterance is not None]
    scored_references = [references[i] for i in scored]
    scores = {}
    for name, decoding_cfg in tqdm(decodings.items(), desc="Decoding", disable=len(decodings) < 2):
        set_decoding(model, decoding_cfg)
        hypotheses = [
            text
            for start in range(0, len(scored), batch_size)
            for text in decode_log_probs(model, [log_probs[i] for i in scored[start : start + batch_size]])
        ]
        texts: list[Optional[str]] = [None] * len(log_probs)
        for i, text in zip(scored, hypotheses):
            texts[i] = text
        wer, cer = error_rates(hypotheses, scored_references) if scored else (None, None)
        scores[name] = DecodingScore(texts=texts, wer=wer, cer=cer)
    return scores


def transcript_records(records: Sequence[dict], texts: Sequence[Optional[str]], errors: Sequence[str]) -> list[dict]:
    """The output records of a decoding: each record with its text, or its error where it has none
    (:func:`~ibnet_nemo.transcribe.output_record`)."""
    return [output_record(record, text, error) for record, text, error in zip(records, texts, errors)]


def metrics_path(output_filename: str | os.PathLike) -> Path:
    """Where the metrics of an evaluation writing transcripts to ``output_filename`` go: ``<stem>_metrics.json``."""
    output = Path(output_filename)
    return output.with_name(f"{output.stem}_metrics.json")


def run_evaluation(cfg: EvaluationConfig | DictConfig) -> EvaluationResult:
    """Transcribe ``cfg.dataset_manifest``, score it, write the transcripts and the metrics JSON.

    Broken inputs get an ``error`` record in the transcripts and are left out of the scores.

    Raises:
        FileNotFoundError, ValueError: a problem with the options (model, manifest, LM) or a manifest record
            without ``text``, found before the acoustic model runs.
    """
    records = reference_records(cfg.dataset_manifest)
    chunking = Chunking(cfg.chunk_len_in_secs, cfg.total_buffer_in_secs)
    model = load_model(cfg.model_path, cfg.cuda, cfg.quantize)
    check_decoding(model, cfg.ctc_decoding)
    log_probs, errors = manifest_log_probs(model, records, cfg.batch_size, debug=cfg.debug, chunking=chunking)
    (score,) = decode_and_score(
        model, log_probs, [record["text"] for record in records], {"decoding": cfg.ctc_decoding}, cfg.batch_size
    ).values()
    transcripts = write_manifest(cfg.output_filename, transcript_records(records, score.texts, errors))
    failed = sum(bool(error) for error in errors)
    result = EvaluationResult(
        wer=score.wer,
        cer=score.cer,
        scored=len(records) - failed,
        failed=failed,
        transcripts=str(transcripts.resolve()),
        metrics=str(metrics_path(transcripts).resolve()),
    )
    Path(result.metrics).write_text(
        json.dumps(
            {
                **asdict(result),
                "model_path": cfg.model_path,
                "dataset_manifest": cfg.dataset_manifest,
                "quantize": cfg.quantize,
            },
            indent=2,
        )
        + "\n"
    )
    return result
