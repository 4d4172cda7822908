"""What the demo compares and how: its models, its decodings, and the settings of a run, checked before it starts.

Each name the results use is spelled once: model and decoding names here, test-set names in the corpus
(:data:`~ibnet_nemo.demo.corpus.TEST_SPLITS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ibnet_nemo.demo.corpus import CorpusSpec

__all__ = ["DECODINGS", "DEMO_MODELS", "REPO", "Decoding", "DemoModel", "DemoSettings", "cpu_has_native_bf16"]

#: The repository checkout the demo runs from (its ``examples/`` and ``configs/``).
REPO = Path(__file__).resolve().parents[2]
_CONFIG_DIR = REPO / "configs"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where the demo recipes' bf16 autocast is
    faster than fp32; on other CPUs it is emulated, and slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@dataclass(frozen=True)
class DemoModel:
    """One model of the comparison.

    Args:
        name: the model's name in the results: one of :data:`DEMO_MODELS`' names (checked by :class:`DemoSettings`).
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


#: The demo's models with the learning rates of the sweep (docs/demo.md): IBNet, which every run trains, and a
#: QuartzNet of the same size, trained beside it with the same data, recipe and steps on request (``--compare``).
DEMO_MODELS = (DemoModel("ibnet", "demo_ibnet", 6e-3), DemoModel("quartznet", "demo_quartznet", 6e-3))


@dataclass(frozen=True)
class Decoding:
    """One way every model is decoded on every test set.

    Args:
        name: its name in the results.
        beam_lm: beam search with the task's word n-gram LM (NeMo's ``pyctcdecode`` strategy); else greedy.
    """

    name: str
    beam_lm: bool


#: The decodings of the demo: greedy, and beam search with the task LM.
DECODINGS = (Decoding("greedy", beam_lm=False), Decoding("lm", beam_lm=True))


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo run can vary, checked here so that a bad value fails before the corpus is built.

    Args:
        output_dir: where everything goes. (Default: ``outputs/demo``)
        corpus: the corpus to build. (Default: ``CorpusSpec()``)
        models: the models to train, each named as one of :data:`DEMO_MODELS`. (Default: IBNet alone; all of
            :data:`DEMO_MODELS` for the side-by-side comparison)
        train_overrides: extra Hydra overrides for every training command, e.g. ``trainer.max_steps=1000``;
            the budget itself (``trainer.max_steps``) is in the configs. (Default: none)
        concurrent: train the models side by side, each on its share of the CPUs, instead of one after the
            other. (Default: True)
        lm_order: order of the task's word n-gram LM, at least 2. (Default: 3)
        lm_alpha: LM weight in beam search, chosen on the validation set (docs/demo.md). (Default: 0.2)
        lm_beta: word insertion bonus in beam search. (Default: 1.0)
        beam_size: beam width. (Default: 32)
        eval_batch_size: utterances per forward pass in evaluation. (Default: 32)
    """

    output_dir: Path = Path("outputs/demo")
    corpus: CorpusSpec = CorpusSpec()
    models: tuple[DemoModel, ...] = DEMO_MODELS[:1]
    train_overrides: tuple[str, ...] = ()
    concurrent: bool = True
    lm_order: int = 3
    lm_alpha: float = 0.2
    lm_beta: float = 1.0
    beam_size: int = 32
    eval_batch_size: int = 32

    def __post_init__(self):
        if not self.models:
            raise ValueError("models must hold at least one DemoModel")
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        known = tuple(model.name for model in DEMO_MODELS)
        for name in names:
            if name not in known:
                raise ValueError(f"model name {name!r} is not one of the demo's models {known}")
        if self.lm_order < 2:
            raise ValueError(f"lm_order must be >= 2, got {self.lm_order}")
        for name in ("beam_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def decoding_config(self, decoding: Decoding, lm_path: Path) -> dict:
        """NeMo's CTC decoding config of ``decoding``, with these settings' beam and the task LM ``lm_path``."""
        if not decoding.beam_lm:
            return {"strategy": "greedy_batch"}
        return {
            "strategy": "pyctcdecode",
            "beam": {
                "beam_size": self.beam_size,
                "ngram_lm_model": str(lm_path),
                "ngram_lm_alpha": self.lm_alpha,
                "beam_beta": self.lm_beta,
            },
        }
