"""The whole demo: corpus -> train IBNet and QuartzNet (``examples/speech_to_text_ctc.py``) -> task LM -> WER of
both, greedy and with the LM, on held-out synthetic voices and real human speech -> table, JSON, plot -> one
real clip transcribed with ``examples/transcribe_speech.py``, the command a user types next.
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

from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.demo.corpus import CorpusSpec, build_corpus
from ibnet_nemo.demo.report import (
    Result,
    format_table,
    plot_validation_curves,
    read_last_step,
    read_validation_curve,
    write_results,
)
from ibnet_nemo.demo.vocabulary import task_sentences

__all__ = ["DEMO_MODELS", "DemoModel", "DemoSettings", "TrainedModel", "evaluate_model", "run_demo", "train_models"]

REPO = Path(__file__).resolve().parents[2]
_TRAIN_SCRIPT = REPO / "examples" / "speech_to_text_ctc.py"
_TRANSCRIBE_SCRIPT = REPO / "examples" / "transcribe_speech.py"
_CONFIG_DIR = REPO / "configs"
# Manifest split of the corpus -> test-set name in the results.
_TEST_SPLITS = {"synthetic_heldout": "test_synthetic_heldout", "real_human": "test_real_human"}


@dataclass(frozen=True)
class DemoModel:
    """One model of the comparison.

    Args:
        name: the model's name in the results (``ibnet`` or ``quartznet``).
        config_name: its config in ``configs/``.
        lr: its learning rate, chosen by the sweep in docs/demo.md (passed as ``model.optim.lr``).
    """

    name: str
    config_name: str
    lr: float

    def __post_init__(self):
        if not (_CONFIG_DIR / f"{self.config_name}.yaml").is_file():
            raise ValueError(f"config_name {self.config_name!r}: no {self.config_name}.yaml in {_CONFIG_DIR}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


#: The two models the demo compares, with the learning rates of the sweep (docs/demo.md).
DEMO_MODELS = (DemoModel("ibnet", "demo_ibnet", 6e-3), DemoModel("quartznet", "demo_quartznet", 6e-3))


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo run can vary.

    Args:
        output_dir: where everything goes. (Default: ``outputs/demo``)
        corpus: the corpus to build. (Default: ``CorpusSpec()``)
        models: the models to train. (Default: :data:`DEMO_MODELS`)
        train_overrides: extra Hydra overrides for both training commands, e.g. ``trainer.max_steps=1000``;
            the budget itself (``trainer.max_steps``) is in the configs. (Default: none)
        concurrent: train the models side by side, each on its share of the CPUs, instead of one after the
            other. (Default: True)
        lm_order: order of the task's word n-gram LM. (Default: 3)
        lm_alpha: LM weight in beam search. (Default: 0.5)
        lm_beta: word insertion bonus in beam search. (Default: 1.0)
        beam_size: beam width. (Default: 32)
        eval_batch_size: utterances per forward pass in evaluation. (Default: 32)
    """

    output_dir: Path = Path("outputs/demo")
    corpus: CorpusSpec = CorpusSpec()
    models: tuple[DemoModel, ...] = DEMO_MODELS
    train_overrides: tuple[str, ...] = ()
    concurrent: bool = True
    lm_order: int = 3
    lm_alpha: float = 0.5
    lm_beta: float = 1.0
    beam_size: int = 32
    eval_batch_size: int = 32

    def __post_init__(self):
        if not self.models:
            raise ValueError("models must hold at least one DemoModel")
        if len({model.name for model in self.models}) != len(self.models):
            raise ValueError(f"model names must be unique, got {[model.name for model in self.models]}")
        for name in ("beam_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainedModel:
    """What a training command left: the ``.nemo``, its log folder, wall and CPU minutes, the validation curve."""

    model: DemoModel
    nemo_file: Path
    log_dir: Path
    log_file: Path
    train_minutes: float
    train_cpu_minutes: float
    train_steps: int
    curve: list[tuple[float, float]] = field(default_factory=list)


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
        sys.executable, str(_TRAIN_SCRIPT), "--config-path=../configs", f"--config-name={model.config_name}",
        f"model.train_ds.manifest_filepath={manifests['train']}",
        f"model.validation_ds.manifest_filepath={manifests['val']}",
        f"model.optim.lr={model.lr}",
        f"exp_manager.explicit_log_dir={log_dir}",
        *overrides,
    ]  # fmt: skip


def train_models(settings: DemoSettings, manifests: dict[str, Path]) -> list[TrainedModel]:
    """Train every model of ``settings`` through ``examples/speech_to_text_ctc.py``; each starts from scratch.

    Side by side (``settings.concurrent``), each process gets ``cpus // models`` threads and the first model's
    Lightning progress bar is shown; every model's full output goes to ``<output_dir>/<name>_train.log`` (NeMo's
    logs and checkpoints to ``<output_dir>/<name>/``).

    Raises:
        RuntimeError: a training command failed (the message names its log).
    """
    if not _TRAIN_SCRIPT.is_file():
        raise FileNotFoundError(f"{_TRAIN_SCRIPT} not found: the demo runs from a checkout of the repository")
    output_dir = settings.output_dir.resolve()
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // len(settings.models)) if settings.concurrent else cpus
    batches = [list(settings.models)] if settings.concurrent else [[model] for model in settings.models]
    trained = []
    finished: dict[str, float] = {}
    for batch in batches:
        running = []
        for index, model in enumerate(batch):
            log_dir = output_dir / model.name
            shutil.rmtree(log_dir, ignore_errors=True)
            log_dir.mkdir(parents=True)
            command = _training_command(model, manifests, log_dir, settings.train_overrides)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            echo = index == 0
            log_file = output_dir / f"{model.name}_train.log"
            print(f"\n=== Training {model.name} ({threads} CPU thread(s)); log: {log_file}")
            print("$ " + _shown(command), flush=True)
            if not echo:
                print(f"({model.name} trains alongside; its progress is in the log)")
            start = time.time()
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            pump = threading.Thread(target=_pump, args=(process.stdout, log_file, echo, finished, model.name),
                                    daemon=True)  # fmt: skip
            pump.start()
            running.append((model, log_dir, log_file, process, pump, start))
        for model, log_dir, log_file, process, pump, start in running:
            _, status, usage = os.wait4(process.pid, 0)  # wait() without the child's CPU time
            process.returncode = os.waitstatus_to_exitcode(status)
            pump.join()
            minutes = (finished[model.name] - start) / 60.0
            cpu_minutes = (usage.ru_utime + usage.ru_stime) / 60.0
            if process.returncode != 0:
                raise RuntimeError(f"training {model.name} failed ({process.returncode}); see {log_file}")
            nemo_file = log_dir / "checkpoints" / f"{model.config_name}.nemo"
            curve = read_validation_curve(log_dir, start)
            steps = read_last_step(log_dir)
            print(f"=== {model.name}: {steps} steps in {minutes:.1f} min ({cpu_minutes:.1f} CPU min) -> {nemo_file}")
            trained.append(TrainedModel(model, nemo_file, log_dir, log_file, minutes, cpu_minutes, steps, curve))
    return trained


def evaluate_model(
    trained: TrainedModel, manifests: dict[str, Path], lm_path: Path, settings: DemoSettings
) -> list[Result]:
    """WER of one trained model on each test set, greedy and with beam search + the task LM.

    The acoustic model runs once per test set; both decodings read the same log-probabilities. Transcripts
    go to ``<output_dir>/transcripts/<model>_<test set>_<decoding>.json``.
    """
    from ibnet_nemo.data.manifest import write_manifest
    from ibnet_nemo.evaluate import error_rates
    from ibnet_nemo.transcribe import AudioError, decode_log_probs, iter_log_probs, load_model, set_decoding

    model = load_model(trained.nemo_file, cuda=-1)
    params = sum(p.numel() for p in model.parameters())
    decodings = {
        "greedy": {"strategy": "greedy_batch"},
        "lm": {"strategy": "pyctcdecode", "beam": {"beam_size": settings.beam_size, "ngram_lm_model": str(lm_path),
                                                   "ngram_lm_alpha": settings.lm_alpha, "beam_beta": settings.lm_beta}},
    }  # fmt: skip
    results = []
    for test_set, split in _TEST_SPLITS.items():
        records = list(read_manifest(manifests[split]))
        log_probs = []
        for batch in iter_log_probs(model, records, settings.eval_batch_size):
            for record, outcome in batch:
                if isinstance(outcome, AudioError):
                    raise RuntimeError(f"cannot score {record['audio_filepath']}: {outcome}")
                log_probs.append(outcome)
        references = [record["text"] for record in records]
        for decoding, decoding_cfg in decodings.items():
            set_decoding(model, decoding_cfg)
            hypotheses = decode_log_probs(model, log_probs)
            wer, _ = error_rates(hypotheses, references)
            write_manifest(
                settings.output_dir / "transcripts" / f"{trained.model.name}_{test_set}_{decoding}.json",
                [{**record, "pred_text": text} for record, text in zip(records, hypotheses)],
            )
            results.append(Result(trained.model.name, params, round(trained.train_minutes, 2),
                                  round(trained.train_cpu_minutes, 2), trained.train_steps, test_set, decoding,
                                  round(100.0 * wer, 2), len(records)))  # fmt: skip
            print(f"{trained.model.name:10s} {test_set:18s} {decoding:6s} WER {100 * wer:5.1f}%  ({len(records)} utt)")
    return results


def _transcribe_one_clip(nemo_file: Path, manifests: dict[str, Path], output_dir: Path, lm_path: Path) -> None:
    """Run ``examples/transcribe_speech.py`` on one real recording, show the command and its answer, and the
    same command with the task LM."""
    record = next(r for r in read_manifest(manifests["test_real_human"]) if len(r["text"].split()) == 1)
    clip = Path(record["source"])
    output = output_dir / "one_clip.json"
    command = [sys.executable, str(_TRANSCRIBE_SCRIPT), f"model_path={nemo_file}", f"audio_filepath={clip}",
               f"output_filename={output}", "cuda=-1"]  # fmt: skip
    print("\nNext, transcribe your own recording, e.g. one of the real test clips:\n$ " + _shown(command))
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"transcribe_speech.py failed ({run.returncode}):\n{run.stderr[-2000:]}")
    answer = next(read_manifest(output))
    print(f"-> {answer.get('pred_text', answer.get('error'))!r}  (reference: {record['text']!r}; written to {output})")
    with_lm = [*command, "ctc_decoding.strategy=pyctcdecode", f"ctc_decoding.beam.ngram_lm_model={lm_path}"]
    print("With beam search and the task LM:\n$ " + _shown(with_lm))


def run_demo(settings: DemoSettings = DemoSettings()) -> list[Result]:
    """Run the whole demo (see the module docstring) and return its results.

    Writes under ``settings.output_dir``: ``corpus/``, ``<model>/`` (training logs, checkpoints),
    ``<model>.nemo``, ``lm/task_<order>gram.arpa``, ``transcripts/``, ``results.json``, ``validation_wer.png``.
    """
    from ibnet_nemo.lm.arpa import build_arpa

    demo_start = time.time()
    output_dir = settings.output_dir.resolve()
    settings = dataclasses.replace(settings, output_dir=output_dir)
    manifests = build_corpus(output_dir / "corpus", settings.corpus)
    corpus_minutes = (time.time() - demo_start) / 60.0

    trained = train_models(settings, manifests)
    for model in trained:
        shutil.copy2(model.nemo_file, output_dir / f"{model.model.name}.nemo")
        model.nemo_file = output_dir / f"{model.model.name}.nemo"

    train_text = [record["text"] for record in read_manifest(manifests["train"])]
    lm_path = build_arpa(task_sentences(train_text), output_dir / "lm" / f"task_{settings.lm_order}gram.arpa",
                         order=settings.lm_order)  # fmt: skip
    print(f"\nTask LM ({settings.lm_order}-gram of the training transcripts): {lm_path}")
    results = [result for model in trained for result in evaluate_model(model, manifests, lm_path, settings)]

    results_path = write_results(results, output_dir / "results.json")
    plot_path = plot_validation_curves({m.model.name: m.curve for m in trained}, output_dir / "validation_wer.png")
    print("\n" + format_table(results))
    print(f"\nResults: {results_path}\nValidation WER plot: {plot_path}")
    print("Models: " + ", ".join(str(m.nemo_file) for m in trained))
    _transcribe_one_clip(trained[0].nemo_file, manifests, output_dir, lm_path)
    print(f"\nDemo finished in {(time.time() - demo_start) / 60:.1f} min (corpus {corpus_minutes:.1f} min).")
    return results
