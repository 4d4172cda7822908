"""The whole demo: corpus -> train IBNet, and QuartzNet beside it when asked (``examples/speech_to_text_ctc.py``)
-> task LM -> WER of each model, greedy and with the LM, on held-out synthetic voices and real human speech ->
table, JSON, plot -> one real clip transcribed with ``examples/transcribe_speech.py``, the command a user types next.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ibnet_nemo.data.manifest import read_manifest, write_manifest
from ibnet_nemo.demo.corpus import REAL_TEST_SET, TEST_SPLITS, build_corpus, corpus_summary
from ibnet_nemo.demo.report import (
    Result,
    format_table,
    plot_validation_curves,
    read_last_step,
    read_validation_curve,
    write_results,
)
from ibnet_nemo.demo.settings import DECODINGS, REPO, DemoModel, DemoSettings, cpu_has_native_bf16
from ibnet_nemo.demo.vocabulary import task_sentences
from ibnet_nemo.evaluate import decode_and_score, manifest_log_probs, transcript_records
from ibnet_nemo.inference import load_model
from ibnet_nemo.lm.arpa import build_arpa

__all__ = ["TrainedModel", "evaluate_model", "run_demo", "train_models"]

_TRAIN_SCRIPT = REPO / "examples" / "speech_to_text_ctc.py"
_TRANSCRIBE_SCRIPT = REPO / "examples" / "transcribe_speech.py"


@dataclass(frozen=True)
class TrainedModel:
    """What a training command left: the final ``.nemo`` (``<output_dir>/<name>.nemo``), its log folder and log,
    wall and CPU minutes, steps trained, the validation curve."""

    model: DemoModel
    nemo_file: Path
    log_dir: Path
    log_file: Path
    train_minutes: float
    train_cpu_minutes: float
    train_steps: int
    curve: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class _TrainingRun:
    """A training command :func:`train_models` started: its process, the thread copying its output, its start."""

    model: DemoModel
    log_dir: Path
    log_file: Path
    process: subprocess.Popen
    pump: threading.Thread
    start_time: float


def _pump(stream, log_file: Path, echo: bool, finished: dict, key: str) -> None:
    """Copy a child's output to its log file, and to our stdout when ``echo`` (progress bars included); at the
    end of the output (the child exited) put the time into ``finished[key]``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end inside a character
    with open(log_file, "wb") as log:
        for chunk in iter(lambda: stream.read1(4096), b""):
            log.write(chunk)
            if echo:
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
    finished[key] = time.time()


def _shown(command: list[str]) -> str:
    """``command`` as a user would type it from the repository root (``python``, repository-relative paths)."""
    return shlex.join(["python", *(arg.replace(f"{REPO}/", "") for arg in command[1:])])


def _training_command(
    model: DemoModel, manifests: dict[str, Path], log_dir: Path, overrides: Sequence[str]
) -> list[str]:
    return [
        sys.executable,
        str(_TRAIN_SCRIPT),
        "--config-path=../configs",
        f"--config-name={model.config_name}",
        f"model.train_ds.manifest_filepath={manifests['train']}",
        f"model.validation_ds.manifest_filepath={manifests['val']}",
        f"model.optim.lr={model.lr}",
        f"exp_manager.explicit_log_dir={log_dir}",
        *overrides,
    ]


def train_models(settings: DemoSettings, manifests: dict[str, Path]) -> list[TrainedModel]:
    """Train every model of ``settings`` through ``examples/speech_to_text_ctc.py``; each starts from scratch.

    Side by side (``settings.concurrent``), each process gets ``cpus // models`` threads and the first model's
    Lightning progress bar is shown; every model's full output goes to ``<output_dir>/<name>_train.log`` (NeMo's
    logs and checkpoints to ``<output_dir>/<name>/``), its final model to ``<output_dir>/<name>.nemo``.

    Raises:
        RuntimeError: a training command failed (the message names its log).
    """
    if not _TRAIN_SCRIPT.is_file():
        raise FileNotFoundError(f"{_TRAIN_SCRIPT} not found: the demo runs from a checkout of the repository")
    output_dir = settings.output_dir.resolve()
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // len(settings.models)) if settings.concurrent else cpus
    batches = [list(settings.models)] if settings.concurrent else [[model] for model in settings.models]
    overrides = (*_precision_overrides(settings.train_overrides), *settings.train_overrides)
    trained = []
    finished: dict[str, float] = {}
    for batch in batches:
        runs = [
            _start_training(model, manifests, output_dir, overrides, threads, echo=index == 0, finished=finished)
            for index, model in enumerate(batch)
        ]
        trained += [_finish_training(run, output_dir, finished) for run in runs]
    return trained


def _precision_overrides(overrides: Sequence[str]) -> list[str]:
    """``["trainer.precision=32"]`` where the configs' bf16 autocast would be emulated (a CPU without native bf16)
    and ``overrides`` choose no precision; else none."""
    if cpu_has_native_bf16() or any(o.lstrip("+~").startswith("trainer.precision=") for o in overrides):
        return []
    print("This CPU has no native bf16 (AVX512-BF16 or AMX): training in fp32 (trainer.precision=32).")
    return ["trainer.precision=32"]


def _start_training(
    model: DemoModel,
    manifests: dict[str, Path],
    output_dir: Path,
    overrides: Sequence[str],
    threads: int,
    echo: bool,
    finished: dict[str, float],
) -> _TrainingRun:
    """Start ``model``'s training command; when its output ends, the time goes into ``finished[model.name]``."""
    log_dir = output_dir / model.name
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    command = _training_command(model, manifests, log_dir, overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_file = output_dir / f"{model.name}_train.log"
    print(f"\n=== Training {model.name} ({threads} CPU thread(s)); log: {log_file}")
    print("$ " + _shown(command), flush=True)
    if not echo:
        print(f"({model.name} trains alongside; its progress is in the log)")
    start_time = time.time()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pump = threading.Thread(target=_pump, args=(process.stdout, log_file, echo, finished, model.name), daemon=True)
    pump.start()
    return _TrainingRun(model, log_dir, log_file, process, pump, start_time)


def _finish_training(run: _TrainingRun, output_dir: Path, finished: dict[str, float]) -> TrainedModel:
    """Wait for ``run``, copy its ``.nemo`` to ``<output_dir>/<name>.nemo`` and read its log folder."""
    _, status, usage = os.wait4(run.process.pid, 0)  # wait() without the child's CPU time
    run.process.returncode = os.waitstatus_to_exitcode(status)
    run.pump.join()
    if run.process.returncode != 0:
        raise RuntimeError(f"training {run.model.name} failed ({run.process.returncode}); see {run.log_file}")
    minutes = (finished[run.model.name] - run.start_time) / 60.0
    cpu_minutes = (usage.ru_utime + usage.ru_stime) / 60.0
    nemo_file = output_dir / f"{run.model.name}.nemo"
    shutil.copy2(run.log_dir / "checkpoints" / f"{run.model.config_name}.nemo", nemo_file)
    curve = read_validation_curve(run.log_dir, run.start_time)
    steps = read_last_step(run.log_dir)
    print(f"=== {run.model.name}: {steps} steps in {minutes:.1f} min ({cpu_minutes:.1f} CPU min) -> {nemo_file}")
    return TrainedModel(run.model, nemo_file, run.log_dir, run.log_file, minutes, cpu_minutes, steps, curve)


def evaluate_model(
    trained: TrainedModel, manifests: dict[str, Path], lm_path: Path, settings: DemoSettings
) -> list[Result]:
    """WER of one trained model on each test set with each of the demo's decodings (greedy, beam search + LM).

    Built on :mod:`ibnet_nemo.evaluate`: the acoustic model runs once per test set and every decoding reads the
    same log-probabilities. Transcripts go to ``<output_dir>/transcripts/<model>_<test set>_<decoding>.json``.

    Raises:
        RuntimeError: a test utterance could not be transcribed.
    """
    model = load_model(trained.nemo_file, cuda=-1)
    params = sum(p.numel() for p in model.parameters())
    decodings = {decoding.name: settings.decoding_config(decoding, lm_path) for decoding in DECODINGS}
    name = trained.model.name
    results = []
    for test_set, split in TEST_SPLITS.items():
        records = list(read_manifest(manifests[split]))
        log_probs, errors = manifest_log_probs(model, records, settings.eval_batch_size)
        for record, error in zip(records, errors):
            if error:
                raise RuntimeError(f"cannot score {record['audio_filepath']}: {error}")
        references = [record["text"] for record in records]
        scores = decode_and_score(model, log_probs, references, decodings, settings.eval_batch_size)
        for decoding, score in scores.items():
            write_manifest(
                settings.output_dir / "transcripts" / f"{name}_{test_set}_{decoding}.json",
                transcript_records(records, score.texts, errors),
            )
            results.append(
                Result(
                    name,
                    params,
                    round(trained.train_minutes, 2),
                    round(trained.train_cpu_minutes, 2),
                    trained.train_steps,
                    test_set,
                    decoding,
                    round(100.0 * score.wer, 2),
                    len(records),
                )
            )
            print(f"{name:10s} {test_set:18s} {decoding:6s} WER {100 * score.wer:5.1f}%  ({len(records)} utt)")
    return results


def _hydra_overrides(prefix: str, config: dict) -> list[str]:
    """``config`` (nested dicts) as Hydra overrides under ``prefix``: ``{"beam": {"beam_size": 32}}`` ->
    ``prefix.beam.beam_size=32``."""
    overrides = []
    for key, value in config.items():
        if isinstance(value, dict):
            overrides += _hydra_overrides(f"{prefix}.{key}", value)
        else:
            overrides.append(f"{prefix}.{key}={value}")
    return overrides


def _transcribe_one_clip(nemo_file: Path, manifests: dict[str, Path], output_dir: Path, lm_decoding: dict) -> None:
    """Run ``examples/transcribe_speech.py`` on one real recording, show the command and its answer, and the
    same command with ``lm_decoding`` (the demo's LM decoding config, as ``ctc_decoding.*`` overrides)."""
    record = next(r for r in read_manifest(manifests[TEST_SPLITS[REAL_TEST_SET]]) if len(r["text"].split()) == 1)
    clip = Path(record["source"])
    output = output_dir / "one_clip.json"
    command = [
        sys.executable,
        str(_TRANSCRIBE_SCRIPT),
        f"model_path={nemo_file}",
        f"audio_filepath={clip}",
        f"output_filename={output}",
        "cuda=-1",
    ]
    print("\nNext, transcribe your own recording, e.g. one of the real test clips:\n$ " + _shown(command))
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"transcribe_speech.py failed ({run.returncode}):\n{run.stderr[-2000:]}")
    answer = next(read_manifest(output))
    print(f"-> {answer.get('pred_text', answer.get('error'))!r}  (reference: {record['text']!r}; written to {output})")
    with_lm = [*command, *_hydra_overrides("ctc_decoding", lm_decoding)]
    print("With beam search and the task LM:\n$ " + _shown(with_lm))


def run_demo(settings: DemoSettings = DemoSettings()) -> list[Result]:
    """Run the whole demo (see the module docstring) and return its results.

    Writes under ``settings.output_dir``: ``corpus/``, ``<model>/`` (training logs, checkpoints),
    ``<model>.nemo``, ``lm/task_<order>gram.arpa``, ``transcripts/``, ``results.json``, ``validation_wer.png``.
    """
    demo_start = time.time()
    output_dir = settings.output_dir.resolve()
    settings = dataclasses.replace(settings, output_dir=output_dir)
    manifests = build_corpus(output_dir / "corpus", settings.corpus)
    corpus_minutes = (time.time() - demo_start) / 60.0

    trained = train_models(settings, manifests)

    train_text = [record["text"] for record in read_manifest(manifests["train"])]
    lm_path = build_arpa(
        task_sentences(train_text), output_dir / "lm" / f"task_{settings.lm_order}gram.arpa", order=settings.lm_order
    )
    print(f"\nTask LM ({settings.lm_order}-gram of the training transcripts): {lm_path}")
    results = [result for model in trained for result in evaluate_model(model, manifests, lm_path, settings)]

    corpus = corpus_summary(manifests)
    results_path = write_results(results, corpus, output_dir / "results.json")
    plot_path = plot_validation_curves({m.model.name: m.curve for m in trained}, output_dir / "validation_wer.png")
    print("\n" + format_table(results, lm_order=settings.lm_order))
    hours = ", ".join(f"{source} {value:.2f} h" for source, value in corpus["hours"]["train"].items())
    print(f"\nTraining corpus: {corpus['train_speakers']} speakers; {hours}")
    print(f"Results: {results_path}\nValidation WER plot: {plot_path}")
    print("Models: " + ", ".join(str(m.nemo_file) for m in trained))
    lm_decoding = settings.decoding_config(next(d for d in DECODINGS if d.beam_lm), lm_path)
    _transcribe_one_clip(trained[0].nemo_file, manifests, output_dir, lm_decoding)
    print(f"\nDemo finished in {(time.time() - demo_start) / 60:.1f} min (corpus {corpus_minutes:.1f} min).")
    return results
