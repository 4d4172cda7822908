"""Shared fixtures: the shipped configs and a tiny generated speech-like dataset (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

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


def _utterance(text: str, rng: np.random.Generator) -> np.ndarray:
    """A word-dependent chirp per word with pauses between: audio a CTC model can start to fit."""
    pieces = []
    for word in text.split():
        base = 200.0 + 90.0 * (sum(map(ord, word)) % 17)
        duration = 0.12 + 0.04 * len(word)
        t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
        tone = np.sin(2 * np.pi * (base + 400.0 * t) * t) * np.hanning(t.size)
        pieces += [tone, np.zeros(int(0.08 * SAMPLE_RATE))]
    audio = np.concatenate([np.zeros(int(0.1 * SAMPLE_RATE)), *pieces])
    return (0.4 * audio + 0.01 * rng.standard_normal(audio.size)).astype(np.float32)


def make_dataset(root: Path, count: int, seed: int) -> Path:
    """Write ``count`` generated 16 kHz WAV utterances of 1-3 words under ``root`` and their manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        text = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
        audio = _utterance(text, rng)
        path = root / f"utt{index:03d}.wav"
        sf.write(path, audio, SAMPLE_RATE)
        records.append({"audio_filepath": str(path), "duration": audio.size / SAMPLE_RATE, "text": text})
    return write_manifest(root / f"{root.name}_manifest.json", records)  # NeMo rejects a bare manifest.json


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """``{"train": manifest, "val": manifest}``: 16 and 6 generated utterances, 0.4-1.5 s each."""
    root = tmp_path_factory.mktemp("tiny_data")
    return {"train": make_dataset(root / "train", 16, seed=0), "val": make_dataset(root / "val", 6, seed=1)}


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_data, tmp_path_factory) -> Path:
    """A BPE tokenizer folder (NeMo's layout) of :data:`TINY_VOCAB_SIZE` pieces built from the tiny training set."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizers"), TINY_VOCAB_SIZE, manifests=[tiny_data["train"]])
