"""The demo's outputs: ``results.json`` (the corpus's speakers and hours, the WER records), the printed table, the
validation-WER plot."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ibnet_nemo.demo.corpus import TEST_SPLITS
from ibnet_nemo.demo.settings import DECODINGS, DEMO_MODELS, DemoSettings

__all__ = [
    "Result",
    "format_table",
    "plot_validation_curves",
    "read_last_step",
    "read_validation_curve",
    "write_results",
]

# Allowed values of the name fields of a Result.
_NAMES = {
    "model": tuple(model.name for model in DEMO_MODELS),
    "test_set": tuple(TEST_SPLITS),
    "decoding": tuple(decoding.name for decoding in DECODINGS),
}


@dataclass(frozen=True)
class Result:
    """One WER measurement of the demo.

    Args:
        model: the name of one of :data:`~ibnet_nemo.demo.settings.DEMO_MODELS`.
        params: trainable parameters of the whole CTC model.
        train_minutes: wall-clock minutes of its training command.
        train_cpu_minutes: CPU minutes of that command (user + system): its wall time on idle cores.
        train_steps: optimizer steps trained.
        test_set: a test set of :data:`~ibnet_nemo.demo.corpus.TEST_SPLITS`.
        decoding: the name of one of :data:`~ibnet_nemo.demo.settings.DECODINGS`.
        wer: word error rate in percent.
        utterances: utterances scored.
    """

    model: str
    params: int
    train_minutes: float
    train_cpu_minutes: float
    train_steps: int
    test_set: str
    decoding: str
    wer: float
    utterances: int

    def __post_init__(self):
        for name, allowed in _NAMES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.utterances < 1:
            raise ValueError(f"utterances must be >= 1, got {self.utterances}")


def write_results(results: Sequence[Result], corpus: dict, path: str | os.PathLike) -> Path:
    """Write ``results.json``: what the corpus held (``corpus``, from
    :func:`~ibnet_nemo.demo.corpus.corpus_summary`: ``train_speakers``, ``hours`` per split and voice source) and
    ``results``, a list of :class:`Result` records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**corpus, "results": [asdict(result) for result in results]}
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def format_table(results: Sequence[Result], lm_order: int = DemoSettings.lm_order) -> str:
    """One row per model: parameters, training wall (and CPU) minutes, steps, WER % per test set and decoding.

    ``lm_order`` is the task LM's order, named in the footnote. (Default: ``DemoSettings``' default)
    """
    columns = [(test_set, decoding) for test_set in _NAMES["test_set"] for decoding in _NAMES["decoding"]]
    header = ["model", "params", "train min (CPU)", "steps"] + [f"{t} {d}" for t, d in columns]
    rows = []
    for model in dict.fromkeys(result.model for result in results):
        mine = [result for result in results if result.model == model]
        wer = {(result.test_set, result.decoding): result for result in mine}
        first = mine[0]
        cells = [
            model,
            f"{first.params / 1e3:.0f}k",
            f"{first.train_minutes:.1f} ({first.train_cpu_minutes:.1f})",
            str(first.train_steps),
        ]
        cells += [f"{wer[c].wer:.1f}% ({wer[c].utterances})" if c in wer else "-" for c in columns]
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    notes = [f"{d.name} = beam search with the task's word {lm_order}-gram LM" for d in DECODINGS if d.beam_lm]
    return "\n".join(lines) + "\n" + "; ".join(["WER % (utterances)", *notes])


def read_validation_curve(log_dir: str | os.PathLike, start_time: float) -> list[tuple[float, float]]:
    """``[(minutes since start_time, validation WER %)]`` from the TensorBoard events exp_manager wrote.

    Args:
        log_dir: the training run's log folder (holds ``events.out.tfevents.*``).
        start_time: the wall-clock time (``time.time()``) the training command started.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    if "val_wer" not in events.Tags().get("scalars", []):
        return []
    return [((event.wall_time - start_time) / 60.0, 100.0 * event.value) for event in events.Scalars("val_wer")]


def read_last_step(log_dir: str | os.PathLike) -> int:
    """Training steps done: Lightning logs each scalar at the 0-based index of the step it follows, so the
    highest index in the TensorBoard events exp_manager wrote, plus one (0 when there is none).

    Read from the events rather than a checkpoint: a Lightning checkpoint is a full pickle, and this package
    never unpickles such files on the user's behalf.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return max((event.step + 1 for tag in events.Tags().get("scalars", []) for event in events.Scalars(tag)), default=0)


def plot_validation_curves(curves: dict[str, list[tuple[float, float]]], path: str | os.PathLike) -> Path:
    """Plot validation WER (%) against training minutes, one line per model, into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for model, curve in curves.items():
        if curve:
            minutes, wer = zip(*curve)
            axes.plot(minutes, wer, marker="o", label=model)
    axes.set_xlabel("training time (minutes since the training command started)")
    axes.set_ylabel("validation WER (%)")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title("make demo: validation WER during training")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
