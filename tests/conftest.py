"""Shared fixtures: the shipped configs, a tiny generated speech-like dataset (no downloads) and a small IBNet
trained on it."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch
from nemo.collections.asr.models import EncDecCTCModel

import ibnet_nemo  # noqa: F401  (registers the plugin in the test process)
from ibnet_nemo.data.manifest import write_manifest
from ibnet_nemo.data.tokenizer import build_tokenizer
from ibnet_nemo.modules import IBNetEncoder

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
#: Every recipe in configs/ (the LibriSpeech recipes, their sub-word variant, the demo's).
ALL_CONFIGS = tuple(sorted(path.stem for path in CONFIG_DIR.glob("*.yaml")))
SHIPPED_CONFIGS = ("quartznet_5x5", "quartznet_10x5", "ibnet_c172", "ibnet_c192", "ibnet_c256")
SAMPLE_RATE = 16000
SMALL_IBNET = ["model.encoder.C=32", "model.encoder.repeat=1", "model.encoder.kernels=[11,11,11,13,13,15,15]"]
TINY_VOCAB_SIZE = 24  # a SentencePiece BPE vocabulary of the tiny set: its 14 letters, <unk>, "▁" and 8 merges
#: Overrides that shrink a shipped IBNet recipe to a model that trains and runs in a second.
TINY_IBNET = ("model.encoder.C=16", "model.encoder.repeat=1")
#: Overrides that build a shipped recipe without data (NeMo then sets up no data loaders).
NO_DATA = ("model.train_ds.manifest_filepath=null", "model.validation_ds.manifest_filepath=null")
WORDS = ("one", "two", "three", "four", "five", "yes", "no", "hello")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose(config_name: str, overrides: list[str] | None = None):
    """A shipped config composed by Hydra, as `speech_to_text_ctc.py --config-name=...` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


def data_overrides(tiny_data: dict[str, Path], batch_size: int = 4) -> list[str]:
    """Hydra overrides that point a shipped config at :func:`tiny_data` and load it in the test process."""
    return [
        f"model.train_ds.manifest_filepath={tiny_data['train']}",
        f"model.validation_ds.manifest_filepath={tiny_data['val']}",
        f"model.train_ds.batch_size={batch_size}",
        "model.train_ds.num_workers=0",
        "model.validation_ds.num_workers=0",
    ]


def tiny_ibnet_model(*overrides: str, seed: int = 0):
    """An untrained tiny IBNet ``EncDecCTCModel`` from ``ibnet_c192.yaml`` (deterministic weights), no data."""
    torch.manual_seed(seed)
    return EncDecCTCModel(cfg=compose("ibnet_c192", [*TINY_IBNET, *NO_DATA, *overrides]).model)


def small_encoder(seed: int = 0, **kwargs):
    """A small ``IBNetEncoder`` (16 features in, C=8, R=2, short kernels) with randomized BatchNorm, in eval mode."""
    torch.manual_seed(seed)
    encoder = IBNetEncoder(feat_in=16, C=8, repeat=2, kernels=(5, 5, 7, 7, 9, 9, 11), **kwargs)
    randomize_batchnorm(encoder, seed=seed)
    return encoder.eval()


def randomize_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so that folding them in is really tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            size = bn.num_features
            bn.running_mean.copy_(0.5 * torch.randn(size, generator=generator))
            bn.running_var.copy_(0.5 + torch.rand(size, generator=generator))
            bn.weight.copy_(1 + 0.3 * torch.randn(size, generator=generator))
            bn.bias.copy_(0.3 * torch.randn(size, generator=generator))


LEAD_SECONDS, PAUSE_SECONDS = 0.1, 0.08  # silence before an utterance's first word, and after every word


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """Where each word of a generated utterance lies: ``(word, first sample, end sample)``."""
    spans, position = [], int(LEAD_SECONDS * SAMPLE_RATE)
    for word in text.split():
        length = int((0.12 + 0.04 * len(word)) * SAMPLE_RATE)
        spans.append((word, position, position + length))
        position += length + int(PAUSE_SECONDS * SAMPLE_RATE)
    return spans


def utterance(text: str, rng: np.random.Generator) -> np.ndarray:
    """A word-dependent chirp per word (where :func:`word_spans` puts it) with pauses between: audio a CTC model
    can start to fit."""
    spans = word_spans(text)
    audio = np.zeros(spans[-1][2] + int(PAUSE_SECONDS * SAMPLE_RATE))
    for word, start, end in spans:
        base = 200.0 + 90.0 * (sum(map(ord, word)) % 17)
        t = np.arange(end - start) / SAMPLE_RATE
        audio[start:end] = np.sin(2 * np.pi * (base + 400.0 * t) * t) * np.hanning(t.size)
    return (0.4 * audio + 0.01 * rng.standard_normal(audio.size)).astype(np.float32)


def make_dataset(root: Path, count: int, seed: int) -> Path:
    """Write ``count`` generated 16 kHz WAV utterances of 1-3 words under ``root`` and their manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        text = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
        audio = utterance(text, rng)
        path = root / f"utt{index:03d}.wav"
        sf.write(path, audio, SAMPLE_RATE)
        records.append({"audio_filepath": str(path), "duration": audio.size / SAMPLE_RATE, "text": text})
    return write_manifest(root / f"{root.name}_manifest.json", records)  # NeMo rejects a bare manifest.json


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """``{"train": manifest, "val": manifest}``: 16 and 6 generated utterances, 0.4-1.5 s each."""
    root = tmp_path_factory.mktemp("tiny_data")
    return {"train": make_dataset(root / "train", 16, seed=0), "val": make_dataset(root / "val", 6, seed=1)}


def fit(cfg, max_steps: int, accelerator: str = "cpu", **trainer_options):
    """Train ``EncDecCTCModel(cfg.model)`` for ``max_steps`` on one ``accelerator`` device without logging or
    checkpoints; ``trainer_options`` (``precision``, ``callbacks``) go to the Lightning ``Trainer``."""
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **trainer_options,
    )
    model = EncDecCTCModel(cfg=cfg.model, trainer=trainer)
    trainer.fit(model)
    return model, trainer


@pytest.fixture(scope="session")
def overfit_model(tiny_data):
    """A small IBNet trained on the tiny training set until it transcribes it."""
    pl.seed_everything(0)
    overrides = (
        data_overrides(tiny_data, batch_size=16)
        + SMALL_IBNET
        + [
            "augment=none",
            "model.preprocessor.dither=0.0",
            "model.optim.name=adamw",
            "model.optim.lr=0.01",
            "model.optim.betas=[0.9,0.98]",
            "model.optim.weight_decay=0.0",
            "model.optim.sched.warmup_ratio=0.05",
        ]
    )
    model, trainer = fit(compose("ibnet_c192", overrides), max_steps=50)
    return model.eval(), trainer


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_data, tmp_path_factory) -> Path:
    """A BPE tokenizer folder (NeMo's layout) of :data:`TINY_VOCAB_SIZE` pieces built from the tiny training set."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizers"), TINY_VOCAB_SIZE, manifests=[tiny_data["train"]])
