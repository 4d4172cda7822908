"""WER and CER of a CTC model on a manifest (``examples/speech_to_text_eval.py``).

The manifest is transcribed by :func:`ibnet_nemo.transcribe.transcribe` (so broken inputs get an ``error`` record
and do not stop the run) and scored with NeMo's ``word_error_rate`` against each record's ``text``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from nemo.collections.asr.metrics.wer import word_error_rate
from omegaconf import DictConfig

from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.transcribe import ModelOptions, input_records, load_model, set_decoding, transcribe

__all__ = ["EvaluationConfig", "EvaluationResult", "error_rates", "metrics_path", "reference_records", "run_evaluation"]


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
        return (f"{scores}  over {self.scored} utterances{failed}.\n"
                f"Transcripts: {self.transcripts}\nMetrics: {self.metrics}")


def error_rates(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """``(WER, CER)`` of ``hypotheses`` against ``references`` (NeMo's ``word_error_rate``)."""
    return (word_error_rate(list(hypotheses), list(references)),
            word_error_rate(list(hypotheses), list(references), use_cer=True))


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


def metrics_path(output_filename: str | os.PathLike) -> Path:
    """Where the metrics of an evaluation writing transcripts to ``output_filename`` go: ``<stem>_metrics.json``."""
    output = Path(output_filename)
    return output.with_name(f"{output.stem}_metrics.json")


def run_evaluation(cfg: EvaluationConfig | DictConfig) -> EvaluationResult:
    """Transcribe ``cfg.dataset_manifest``, score it, write the transcripts and the metrics JSON.

    Raises:
        FileNotFoundError, ValueError: a problem with the options, or a manifest record without ``text``.
    """
    records = reference_records(cfg.dataset_manifest)
    model = load_model(cfg.model_path, cfg.cuda)
    set_decoding(model, cfg.ctc_decoding)
    summary = transcribe(model, records, cfg.output_filename, cfg.batch_size, debug=cfg.debug)
    scored = [record for record in read_manifest(summary.output_path) if "pred_text" in record]
    wer, cer = error_rates([r["pred_text"] for r in scored], [r["text"] for r in scored]) if scored else (None, None)
    result = EvaluationResult(
        wer=wer, cer=cer, scored=len(scored), failed=summary.failed,
        transcripts=str(summary.output_path.resolve()), metrics=str(metrics_path(summary.output_path).resolve()),
    )
    Path(result.metrics).write_text(json.dumps({**asdict(result), "model_path": cfg.model_path,
                                                "dataset_manifest": cfg.dataset_manifest}, indent=2) + "\n")
    return result
