"""Speed of the shipped models through NeMo, side by side: inference throughput, training step, peak memory.

Every model is an ``EncDecCTCModel`` built from a shipped config (``configs/<name>.yaml``, composed by Hydra
with ``augment=none``) exactly as a user gets it; nothing is tuned per model. Timings are wall-clock and
interleaved (one run of every model, then the next round), so a machine that gets busier slows all models
alike; each figure is the median over the rounds.

- Inference: ``model(input_signal=audio, ...)`` in eval mode under ``torch.inference_mode()``, the call
  ``model.transcribe`` makes: preprocessor (mel spectrogram), encoder and decoder, from raw 16 kHz audio.
  RTFx = seconds of audio / seconds of compute.
- Training step: train mode, the same forward, CTC loss and backward (no optimizer step), on random targets
  of 10 characters per second of audio.
- Peak memory: on the CPU, the rise of the process's peak resident memory (``VmHWM``) over one training step,
  measured in a fresh process per model after a warm-up step, with glibc told to hand every freed block of
  64 KiB or more back to the system (``MALLOC_MMAP_THRESHOLD_``), so that resident memory follows what is
  allocated. On a CUDA device, the rise of PyTorch's peak allocated device memory over the step.

On a CUDA device every timed call ends with ``torch.cuda.synchronize()``; with ``autocast_dtype`` set, the
forward (inference and training) runs under ``torch.autocast`` with that dtype, weights staying fp32. With
``quantize="int8"`` (CPU only), every model timed for inference also gets an int8 row: the same weights through
:func:`~ibnet_nemo.quantize.quantize_int8`, timed in the same interleaved rounds (inference only).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from omegaconf import open_dict
from tqdm.auto import tqdm

from ibnet_nemo.quantize import apply_quantization, check_quantization

__all__ = [
    "AUTOCAST_DTYPES",
    "BASELINE",
    "DEVICES",
    "FULL",
    "MODELS",
    "QUICK",
    "BenchmarkResult",
    "BenchmarkSettings",
    "ModelSpec",
    "build_model",
    "describe_device",
    "format_markdown",
    "run_benchmark",
    "write_report",
]

CHARACTERS_PER_SECOND = 10  # random CTC targets; any length the encoder output can align works alike
DEVICES = ("cpu", "cuda")
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: a shipped config plus Hydra overrides.

    Args:
        label: row name in the table.
        config_name: a config in the config folder, e.g. ``"ibnet_c192"``.
        overrides: Hydra overrides applied on top (Default: ``()``).
        inference: time inference too; ``False`` for variants that change only training (Default: ``True``).
    """

    label: str
    config_name: str
    overrides: tuple[str, ...] = ()
    inference: bool = True


MODELS = (
    ModelSpec("QuartzNet 5x5", "quartznet_5x5"),
    ModelSpec("QuartzNet 10x5", "quartznet_10x5"),
    ModelSpec("IBNet C=172", "ibnet_c172"),
    ModelSpec("IBNet C=192", "ibnet_c192"),
    ModelSpec("IBNet C=256", "ibnet_c256"),
    ModelSpec("IBNet C=192, checkpoint_blocks", "ibnet_c192", ("++model.encoder.checkpoint_blocks=true",), False),
)
BASELINE = "QuartzNet 5x5"


@dataclass(frozen=True)
class BenchmarkSettings:
    """Batch shapes and repetitions.

    Args:
        inference_shapes: ``(batch size, seconds per utterance)`` of each timed inference batch.
        train_shape: ``(batch size, seconds per utterance)`` of the timed training step.
        inference_rounds: timed rounds per inference shape, after one untimed warm-up round.
        train_rounds: timed training rounds, after one untimed warm-up round.
        threads: ``torch.set_num_threads`` for the whole run.
        device: ``"cpu"`` or ``"cuda"`` (Default: ``"cpu"``).
        autocast_dtype: ``None`` for fp32, or a key of :data:`AUTOCAST_DTYPES` to run the forward under
            ``torch.autocast`` (Default: ``None``).
        quantize: ``None``, or ``"int8"`` to time an int8 row next to every fp32 row (CPU) (Default: ``None``).
    """

    inference_shapes: tuple[tuple[int, float], ...] = ((1, 20.0), (16, 10.0))
    train_shape: tuple[int, float] = (8, 10.0)
    inference_rounds: int = 5
    train_rounds: int = 3
    threads: int = 2
    device: str = "cpu"
    autocast_dtype: Optional[str] = None
    quantize: Optional[str] = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.autocast_dtype is not None and self.autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast_dtype must be None or one of {sorted(AUTOCAST_DTYPES)}, got {self.autocast_dtype!r}"
            )
        check_quantization(self.quantize)
        if self.quantize is not None and (self.device != "cpu" or self.autocast_dtype is not None):
            raise ValueError(f"quantize={self.quantize} runs on the CPU without autocast")
        for batch, seconds in (*self.inference_shapes, self.train_shape):
            if batch < 1 or seconds <= 0:
                raise ValueError(f"a batch shape needs batch >= 1 and seconds > 0, got ({batch}, {seconds})")
        for name in ("inference_rounds", "train_rounds", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


FULL = BenchmarkSettings()
# Smoke test: every model and code path, tiny batches, one or two rounds.
QUICK = BenchmarkSettings(
    inference_shapes=((1, 2.0), (2, 1.5)), train_shape=(2, 1.5), inference_rounds=2, train_rounds=1
)


def shape_key(batch: int, seconds: float) -> str:
    """Column key of a batch shape, e.g. ``"16x10s"``."""
    return f"{batch}x{seconds:g}s"


@dataclass
class BenchmarkResult:
    """Measured figures of one model (times in seconds, memory in MiB)."""

    label: str
    config_name: str
    params: int
    rtfx: dict[str, float] = field(default_factory=dict)
    train_step_s: float = float("nan")
    train_peak_mib: float = float("nan")


def build_model(config_dir: str | os.PathLike, spec: ModelSpec):
    """``EncDecCTCModel`` of a shipped config (Hydra-composed with ``augment=none``), without data loaders."""
    from hydra import compose, initialize_config_dir
    from nemo.collections.asr.models import EncDecCTCModel

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        cfg = compose(config_name=spec.config_name, overrides=["augment=none", *spec.overrides])
    with open_dict(cfg):
        for key in ("train_ds", "validation_ds", "test_ds"):
            cfg.model.pop(key, None)
    return EncDecCTCModel(cfg=cfg.model)


def _audio_batch(
    batch: int, seconds: float, sample_rate: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic noise-like audio `(B, samples)` and its `(B,)` lengths (all full), on ``device``."""
    generator = torch.Generator().manual_seed(batch * 1000 + int(seconds * 10))
    samples = int(seconds * sample_rate)
    audio = 0.1 * torch.randn(batch, samples, generator=generator)
    return audio.to(device), torch.full((batch,), samples, dtype=torch.int64, device=device)


def _autocast(settings: BenchmarkSettings):
    if settings.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(settings.device, dtype=AUTOCAST_DTYPES[settings.autocast_dtype])


def _synchronize(settings: BenchmarkSettings) -> None:
    if settings.device == "cuda":
        torch.cuda.synchronize()


def _inference_seconds(model, audio: torch.Tensor, lengths: torch.Tensor, settings: BenchmarkSettings) -> float:
    with torch.inference_mode(), _autocast(settings):
        _synchronize(settings)
        start = time.perf_counter()
        model(input_signal=audio, input_signal_length=lengths)
        _synchronize(settings)
        return time.perf_counter() - start


def _train_step(
    model, audio: torch.Tensor, lengths: torch.Tensor, seconds: float, settings: BenchmarkSettings
) -> float:
    """One forward + CTC loss + backward in train mode; returns its wall-clock seconds."""
    batch = audio.shape[0]
    target_length = max(1, int(seconds * CHARACTERS_PER_SECOND))
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, model.decoder.num_classes_with_blank - 1, (batch, target_length), generator=generator)
    targets, target_lengths = targets.to(audio.device), torch.full((batch,), target_length, device=audio.device)
    _synchronize(settings)
    start = time.perf_counter()
    with _autocast(settings):  # forward and loss, as Lightning's mixed precision runs a training step
        log_probs, encoded_len, _ = model(input_signal=audio, input_signal_length=lengths)
        loss = model.loss(
            log_probs=log_probs, targets=targets, input_lengths=encoded_len, target_lengths=target_lengths
        )
    loss.backward()
    _synchronize(settings)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def _resident_mib(field_name: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+) kB", status).group(1)) / 1024


def _train_peak_mib(config_dir: str, spec: ModelSpec, settings: BenchmarkSettings) -> float:
    """Peak resident memory rise over one training step (runs in a fresh process, see the module doc)."""
    torch.set_num_threads(settings.threads)
    model = build_model(config_dir, spec).train()
    batch, seconds = settings.train_shape
    audio, lengths = _audio_batch(batch, seconds, model.cfg.sample_rate)
    _train_step(model, audio, lengths, seconds, settings)
    before = _resident_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    _train_step(model, audio, lengths, seconds, settings)
    return _resident_mib("VmHWM") - before


def _cuda_train_peak_mib(model, audio: torch.Tensor, lengths: torch.Tensor, settings: BenchmarkSettings) -> float:
    """Peak allocated device memory rise over one training step (after the timed ones: a warm model)."""
    seconds = settings.train_shape[1]
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _train_step(model, audio, lengths, seconds, settings)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _measure_peak_memory(config_dir: str, spec: ModelSpec, settings: BenchmarkSettings) -> float:
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)  # read by glibc at the child's start
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_train_peak_mib, (config_dir, spec, settings))
    finally:
        if previous is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous


def _interleaved_medians(
    models: dict[str, object], rounds: int, run: Callable[[object], float], description: str
) -> dict[str, float]:
    """One untimed warm-up round, then ``rounds`` rounds of every model in turn; median seconds per model."""
    times: dict[str, list[float]] = {label: [] for label in models}
    with tqdm(total=(rounds + 1) * len(models), desc=description, leave=False) as progress:
        for round_index in range(rounds + 1):
            for label, model in models.items():
                elapsed = run(model)
                if round_index > 0:
                    times[label].append(elapsed)
                progress.update()
    return {label: statistics.median(values) for label, values in times.items()}


def run_benchmark(
    config_dir: str | os.PathLike, specs: Sequence[ModelSpec] = MODELS, settings: BenchmarkSettings = FULL
) -> list[BenchmarkResult]:
    """Build every model of ``specs`` and measure it (see the module doc for what is timed and how).

    Args:
        config_dir: the folder holding the shipped configs.
        specs: models to measure; labels must be unique (Default: :data:`MODELS`).
        settings: batch shapes, rounds, threads (Default: :data:`FULL`).

    Returns:
        One :class:`BenchmarkResult` per spec, in order; with ``settings.quantize``, each spec timed for inference
        is followed by its quantized row (labelled ``"<label> int8"``, no training figures).
    """
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}")
    torch.set_num_threads(settings.threads)
    config_dir = str(config_dir)
    models = {
        spec.label: build_model(config_dir, spec).to(settings.device) for spec in tqdm(specs, desc="building models")
    }
    results = {
        label: BenchmarkResult(label, spec.config_name, sum(p.numel() for p in model.parameters()))
        for spec, (label, model) in zip(specs, models.items())
    }
    sample_rate = models[labels[0]].cfg.sample_rate

    inference_models = {spec.label: models[spec.label].eval() for spec in specs if spec.inference}
    order = list(labels)
    if settings.quantize is not None:
        for spec in specs:
            if not spec.inference:
                continue
            label = f"{spec.label} {settings.quantize}"
            quantized = build_model(config_dir, spec).eval()
            quantized.load_state_dict(models[spec.label].state_dict())
            inference_models[label] = apply_quantization(quantized, settings.quantize)
            results[label] = BenchmarkResult(label, spec.config_name, results[spec.label].params)
            order.insert(order.index(spec.label) + 1, label)
    for batch, seconds in settings.inference_shapes:
        key = shape_key(batch, seconds)
        audio, lengths = _audio_batch(batch, seconds, sample_rate, settings.device)
        medians = _interleaved_medians(
            inference_models,
            settings.inference_rounds,
            lambda model: _inference_seconds(model, audio, lengths, settings),
            f"inference {key}",
        )
        for label, median in medians.items():
            results[label].rtfx[key] = batch * seconds / median

    batch, seconds = settings.train_shape
    audio, lengths = _audio_batch(batch, seconds, sample_rate, settings.device)
    train_models = {label: model.train() for label, model in models.items()}
    medians = _interleaved_medians(
        train_models,
        settings.train_rounds,
        lambda model: _train_step(model, audio, lengths, seconds, settings),
        "training step",
    )
    for spec in tqdm(specs, desc="peak memory"):
        results[spec.label].train_step_s = medians[spec.label]
        if settings.device == "cuda":
            peak = _cuda_train_peak_mib(models[spec.label], audio, lengths, settings)
        else:
            peak = _measure_peak_memory(config_dir, spec, settings)
        results[spec.label].train_peak_mib = peak
    return [results[label] for label in order]


def describe_device(settings: BenchmarkSettings) -> str:
    """Where the run measures, e.g. ``"2 CPU threads, fp32"`` or ``"NVIDIA H200, bfloat16 autocast"``."""
    where = torch.cuda.get_device_name() if settings.device == "cuda" else f"{settings.threads} CPU threads"
    precision = settings.autocast_dtype + " autocast" if settings.autocast_dtype else "fp32"
    return f"{where}, {precision}{' and ' + settings.quantize if settings.quantize else ''}"


def format_markdown(results: Sequence[BenchmarkResult], settings: BenchmarkSettings, baseline: str = BASELINE) -> str:
    """The results as one markdown table, ratios relative to the ``baseline`` row."""
    base = next((result for result in results if result.label == baseline), None)
    if base is None:
        raise ValueError(f"baseline {baseline!r} is not among the results {[r.label for r in results]}")
    keys = [shape_key(*shape) for shape in settings.inference_shapes]
    train_key = shape_key(*settings.train_shape)
    header = ["model", "params"]
    header += [f"RTFx {key} (x {baseline})" for key in keys]
    header += [f"train step {train_key} (x {baseline})", f"train peak MiB (x {baseline})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        cells = [result.label, f"{result.params / 1e6:.2f}M"]
        for key in keys:
            rtfx = result.rtfx.get(key)
            cells.append("- (training only)" if rtfx is None else f"{rtfx:.1f} ({rtfx / base.rtfx[key]:.2f})")
        if math.isnan(result.train_step_s):
            cells += ["- (inference only)"] * 2
        else:
            cells.append(f"{result.train_step_s:.3g} s ({result.train_step_s / base.train_step_s:.2f})")
            cells.append(f"{result.train_peak_mib:.0f} ({result.train_peak_mib / base.train_peak_mib:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(results: Sequence[BenchmarkResult], settings: BenchmarkSettings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for batch, seconds in settings.inference_shapes:
        key = shape_key(batch, seconds)
        measured = [result for result in results if key in result.rtfx]
        axes.plot([r.params / 1e6 for r in measured], [r.rtfx[key] for r in measured], "o", label=f"batch {key}")
        for result in measured:
            axes.annotate(
                result.label,
                (result.params / 1e6, result.rtfx[key]),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, 3),
            )
    axes.margins(x=0.15)  # room for the labels
    axes.set_xlabel("parameters (millions)")
    axes.set_ylabel("RTFx (audio seconds per compute second)")
    axes.set_title(f"Inference throughput, full model from audio, {describe_device(settings)}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    results: Sequence[BenchmarkResult], settings: BenchmarkSettings, output_dir: str | os.PathLike
) -> dict[str, Path]:
    """Write ``benchmark.md`` (the table), ``benchmark.json`` (settings and raw figures) and
    ``benchmark.png`` (throughput vs parameters) into ``output_dir``; returns their paths by kind."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / f"benchmark.{kind}" for kind in ("md", "json", "png")}
    paths["md"].write_text(format_markdown(results, settings))
    paths["json"].write_text(
        json.dumps(
            {
                "settings": asdict(settings),
                "torch": torch.__version__,
                "device": describe_device(settings),
                "results": [asdict(result) for result in results],
            },
            indent=2,
        )
        + "\n"
    )
    _plot(results, settings, paths["png"])
    return paths
