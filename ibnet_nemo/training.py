"""Train a NeMo CTC model (IBNet or QuartzNet) from a Hydra config, with the guards a long run needs.

``examples/speech_to_text_ctc.py`` is a thin entry point around :func:`train`. On top of NeMo's
``EncDecCTCModel`` + Lightning ``Trainer`` + ``exp_manager`` flow (``EncDecCTCModelBPE`` when the model config has
a ``tokenizer:`` block, as in NeMo's ``speech_to_text_ctc_bpe.py``) this adds:

- a pre-flight manifest check (:mod:`ibnet_nemo.data.manifest_check`) that stops before any compute when the
  data is unusable and otherwise trains on a cleaned manifest, saying what it dropped;
- checkpoint files that are complete or absent (:class:`AtomicCheckpointIO`), and a resume that only ever
  picks a complete ``*-last.ckpt`` (:func:`prepare_resume`), so a run killed at any moment (even SIGKILL)
  continues with the same command;
- snapshots every N epochs beside exp_manager's last / best-by-``val_wer`` checkpoints;
- a guard that stops on a NaN/inf loss, naming the batch's audio files, before the bad step reaches the
  weights, and refuses to write non-finite weights into a checkpoint (:class:`NonFiniteLossGuard`).

The plugin's own settings live in the config's ``ibnet_training:`` section (:class:`IBNetTrainingConfig`).
"""

from __future__ import annotations

import copy
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE
from nemo.utils.callbacks.nemo_model_checkpoint import NeMoModelCheckpoint
from nemo.utils.exp_manager import exp_manager
from nemo.utils.get_rank import is_global_rank_zero
from nemo.utils.trainer_utils import resolve_trainer_cfg
from omegaconf import DictConfig, OmegaConf, open_dict

from ibnet_nemo.data.manifest_check import ManifestCheckError, SubwordUnits, check_manifest
from ibnet_nemo.fileio import PARTIAL_SUFFIX, atomic_path

__all__ = [
    "AtomicCheckpointIO",
    "IBNetTrainingConfig",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "TrainingOutputs",
    "build_trainer",
    "check_training_manifests",
    "is_complete_checkpoint",
    "model_class",
    "prepare_resume",
    "train",
]

#: Suffix given to a ``*-last.ckpt`` found damaged before a resume (kept for inspection, never resumed).
INCOMPLETE_SUFFIX = ".incomplete"
#: Suffix given to a checkpoint written after the one a run resumes from (a future the run will redo).
STALE_SUFFIX = ".stale"
#: Files exp_manager resumes from (``resume_if_exists``).
LAST_CHECKPOINT_GLOB = "*last.ckpt"
#: Lightning's ``{epoch}`` in a checkpoint name (exp_manager's and the snapshots' templates both carry it).
_EPOCH_IN_NAME = re.compile(r"epoch=(\d+)")
#: Manifest names NeMo refuses for validation / test data (it names the logged metrics after the file).
UNNAMEABLE_EVALUATION_MANIFESTS = ("manifest.json", "dataset.json")


@dataclass
class IBNetTrainingConfig:
    """The config's ``ibnet_training:`` section (values in the YAML; this class only types them).

    Attributes:
        snapshot_every_n_epochs: keep a checkpoint every N epochs besides last / best (``None``: no snapshots).
        check_manifests: run the pre-flight manifest check on the train / validation / test manifests.
        max_dropped_fraction: the check refuses a manifest when more than this fraction of records is unusable.
    """

    snapshot_every_n_epochs: Optional[int]
    check_manifests: bool
    max_dropped_fraction: float

    def __post_init__(self) -> None:
        if self.snapshot_every_n_epochs is not None and self.snapshot_every_n_epochs < 1:
            raise ValueError(f"snapshot_every_n_epochs must be >= 1 or null, got {self.snapshot_every_n_epochs}")


@dataclass
class TrainingOutputs:
    """Where a training run left its results."""

    log_dir: Path
    checkpoint_dir: Path
    nemo_file: Path


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the batch's audio files."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O whose files are complete or absent, never half-written.

    Lightning's own save writes into a temporary file under the system temp folder and moves it; across file
    systems (local ``/tmp``, checkpoints on a network disk) that move is a copy, and a kill during it leaves a
    truncated checkpoint under its final name. Here the temporary file sits beside the checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole ``torch.save`` archive: readable zip directory and every CRC correct."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def prepare_resume(checkpoint_dir: str | os.PathLike) -> Optional[Path]:
    """Leave exactly one complete ``*last.ckpt`` in ``checkpoint_dir`` for exp_manager to resume from.

    A kill can leave: temporary ``*.partial`` files (removed); a ``*last.ckpt`` damaged by other means, e.g. a
    full disk or a copy cut short (renamed to ``*.incomplete``); NeMo's ``-unfinished`` marker beside a complete
    file, which NeMo would delete at start-up (marker removed: with :class:`AtomicCheckpointIO` a file under its
    final name is complete); two complete ``*last.ckpt`` when the kill fell between writing the new one and
    deleting the old one (the older is deleted, finishing that step); a best or snapshot checkpoint of a later
    epoch than the resumed one, when the kill fell between writing it and the new ``*last.ckpt`` (renamed to
    ``*.stale``: the resumed run redoes that epoch and would otherwise keep both, the new one as ``-v1``).

    Returns:
        The checkpoint training will resume from, or ``None`` when there is none.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    for partial in checkpoint_dir.glob(f".*{PARTIAL_SUFFIX}"):
        print(f"Removing an interrupted checkpoint write: {partial}")
        partial.unlink()
    complete = []
    for checkpoint in checkpoint_dir.rglob(LAST_CHECKPOINT_GLOB):
        marker = NeMoModelCheckpoint.format_checkpoint_unfinished_marker_path(checkpoint)
        if is_complete_checkpoint(checkpoint):
            complete.append(checkpoint)
        else:
            damaged = checkpoint.with_name(checkpoint.name + INCOMPLETE_SUFFIX)
            print(f"Not resuming from a damaged checkpoint: {checkpoint} (moved to {damaged.name})")
            checkpoint.replace(damaged)
        marker.unlink(missing_ok=True)
    if not complete:
        return None
    complete.sort(key=lambda path: path.stat().st_mtime)
    for superseded in complete[:-1]:
        print(f"Removing superseded checkpoint: {superseded}")
        superseded.unlink()
    resume_from = complete[-1]
    resume_epoch = _epoch_in_name(resume_from)
    for checkpoint in checkpoint_dir.rglob("*.ckpt"):
        epoch = _epoch_in_name(checkpoint)
        if checkpoint != resume_from and None not in (epoch, resume_epoch) and epoch > resume_epoch:
            stale = checkpoint.with_name(checkpoint.name + STALE_SUFFIX)
            print(f"Setting aside a checkpoint newer than the one resumed from: {checkpoint} (moved to {stale.name})")
            checkpoint.replace(stale)
    return resume_from


def _epoch_in_name(checkpoint: Path) -> Optional[int]:
    match = _EPOCH_IN_NAME.search(checkpoint.name)
    return int(match.group(1)) if match else None


class NonFiniteLossGuard(Callback):
    """Stop training on a NaN/inf loss before its gradients reach the weights; never checkpoint NaN weights.

    The loss is checked before ``backward`` (on every rank; one rank's bad loss stops all of them together, so
    DDP does not hang). The error names the batch's audio files, matched in the training dataset by transcript
    (and by length where transcripts repeat), and flags the files whose audio itself is not finite.
    """

    def __init__(self) -> None:
        super().__init__()
        self._batch = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int):
        self._batch = batch

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss).all())
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            where = f"step {trainer.global_step}, epoch {trainer.current_epoch}"
            if finite:
                raise NonFiniteLossError(f"training loss became non-finite on another rank at {where}")
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at {where}; the weights stay as after the previous step and "
                f"no checkpoint was written. Batch:\n{self.describe_batch(trainer)}"
            )

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        bad = [
            name
            for name, value in checkpoint["state_dict"].items()
            if value.is_floating_point() and not torch.isfinite(value).all()
        ]
        if bad:
            raise NonFiniteLossError(f"refusing to write a checkpoint with non-finite weights: {', '.join(bad[:5])}")

    def describe_batch(self, trainer: pl.Trainer) -> str:
        """One line per utterance of the current batch: its audio file(s) and whether its samples are finite."""
        signal, signal_len, tokens, tokens_len = self._batch[:4]
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        collection = getattr(getattr(dataset, "manifest_processor", None), "collection", None)
        by_tokens: dict[tuple, list] = {}
        for entry in collection or ():
            by_tokens.setdefault(tuple(entry.text_tokens), []).append(entry)
        featurizer = getattr(dataset, "featurizer", None)
        sample_rate = featurizer.sample_rate if featurizer is not None else None
        lines = []
        for index in range(signal.shape[0]):
            length = int(signal_len[index])
            candidates = by_tokens.get(tuple(tokens[index, : int(tokens_len[index])].tolist()), [])
            if len(candidates) > 1 and sample_rate:
                seconds = length / sample_rate
                closest = min(abs(entry.duration - seconds) for entry in candidates)
                candidates = [entry for entry in candidates if abs(entry.duration - seconds) == closest]
            if not candidates:
                name = "(file not identifiable from this dataset)"
            else:
                name = " or ".join(entry.audio_file for entry in candidates)
            audio_finite = bool(torch.isfinite(signal[index, :length]).all())
            lines.append(f"  {name}" + ("" if audio_finite else "  <- audio samples are not finite"))
        return "\n".join(lines)


def model_class(model_cfg: DictConfig) -> type[EncDecCTCModel]:
    """NeMo's sub-word ``EncDecCTCModelBPE`` for a model config with a ``tokenizer:`` block, else the character
    ``EncDecCTCModel``."""
    return EncDecCTCModelBPE if model_cfg.get("tokenizer") is not None else EncDecCTCModel


def _subword_units(model_cfg: DictConfig) -> SubwordUnits:
    """The output units of the config's tokenizer (SentencePiece, ``type: bpe``), for the manifest check."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer

    tokenizer_cfg = model_cfg.tokenizer
    if tokenizer_cfg.type != "bpe":
        raise ValueError(
            f"the manifest check reads SentencePiece tokenizers (tokenizer.type: bpe), got {tokenizer_cfg.type!r}; "
            "set ibnet_training.check_manifests=false to train without it"
        )
    model_path = Path(tokenizer_cfg.get("model_path") or Path(tokenizer_cfg.dir) / "tokenizer.model")
    if not model_path.is_file():
        raise FileNotFoundError(
            f"{model_path}: no tokenizer model; build one with examples/process_asr_text_tokenizer.py and pass its "
            "folder as model.tokenizer.dir"
        )
    return SubwordUnits(SentencePieceTokenizer(model_path=str(model_path)))


def build_trainer(trainer_cfg: DictConfig) -> pl.Trainer:
    """A Lightning ``Trainer`` from the config's ``trainer:`` section (NeMo's ``resolve_trainer_cfg``), with
    :class:`AtomicCheckpointIO` and :class:`NonFiniteLossGuard` added."""
    kwargs = resolve_trainer_cfg(trainer_cfg)
    kwargs["plugins"] = [*kwargs.get("plugins", []), AtomicCheckpointIO()]
    kwargs["callbacks"] = [*kwargs.get("callbacks", []), NonFiniteLossGuard()]
    return pl.Trainer(**kwargs)


def _experiment_dir(cfg: DictConfig) -> Path:
    """The folder exp_manager logs into when ``resume_if_exists`` is set (no version subfolder)."""
    exp = cfg.exp_manager
    if exp.get("explicit_log_dir"):
        return Path(exp.explicit_log_dir)
    return Path(exp.get("exp_dir") or "nemo_experiments") / exp.name


def check_training_manifests(cfg: DictConfig, settings: IBNetTrainingConfig, verbose: bool = True) -> DictConfig:
    """Run the pre-flight manifest check on the train, validation and test manifests of ``cfg.model``.

    Returns:
        ``cfg`` with every manifest that needed cleaning replaced by its cleaned copy (written under
        ``<experiment dir>/checked_manifests/<split>/``).

    Raises:
        ManifestCheckError: a manifest is unusable; the message holds every report.
    """
    cfg = copy.deepcopy(cfg)
    sample_rate = int(cfg.model.sample_rate)
    hop_length = round(cfg.model.preprocessor.window_stride * sample_rate)
    subsampling_factor = EncDecCTCModel.from_config_dict(cfg.model.encoder).subsampling_factor
    subwords = _subword_units(cfg.model) if model_class(cfg.model) is EncDecCTCModelBPE else None
    reports = []
    for split in ("train_ds", "validation_ds", "test_ds"):
        data_cfg = cfg.model.get(split)
        if data_cfg is None or data_cfg.get("manifest_filepath") is None:
            continue
        if data_cfg.get("is_tarred") or data_cfg.get("use_lhotse"):
            if verbose:
                print(f"Manifest check skipped for {split}: tarred / Lhotse data is checked when it is built")
            continue
        manifests = data_cfg.manifest_filepath
        manifests = [Path(path.strip()) for path in (manifests.split(",") if isinstance(manifests, str) else manifests)]
        checked = []
        for manifest in manifests:
            if split != "train_ds" and manifest.name in UNNAMEABLE_EVALUATION_MANIFESTS:
                raise ManifestCheckError(
                    f"{manifest}: NeMo refuses {split} manifests named {manifest.name} (it names the logged metrics "
                    "after the file); give it a descriptive name such as dev_clean.json"
                )
            report = check_manifest(
                manifest,
                labels=None if subwords else list(data_cfg.labels),
                sample_rate=sample_rate,
                hop_length=hop_length,
                subsampling_factor=subsampling_factor,
                cleaned_dir=_experiment_dir(cfg) / "checked_manifests" / split,
                max_dropped_fraction=settings.max_dropped_fraction,
                drop_unalignable=split == "train_ds",
                subwords=subwords,
            )
            reports.append(report)
            checked.append(str(report.cleaned_manifest or report.manifest))
        with open_dict(data_cfg):
            data_cfg.manifest_filepath = checked[0] if len(checked) == 1 else checked
    text = "\n".join(report.format() for report in reports)
    if any(report.fatal for report in reports):
        raise ManifestCheckError(f"the training data is not usable; nothing was trained.\n{text}")
    if verbose and text:
        print(text)
    return cfg


def train(cfg: DictConfig) -> TrainingOutputs:
    """Check the data, train ``cfg.model`` with NeMo's ``EncDecCTCModel`` (``EncDecCTCModelBPE`` for a config with
    a ``tokenizer:`` block, :func:`model_class`), test it if ``model.test_ds`` is set.

    Args:
        cfg: a composed training config (``configs/*.yaml``): ``model``, ``trainer``, ``exp_manager`` and
            ``ibnet_training`` sections.

    Returns:
        Where the logs, checkpoints and final ``.nemo`` are.

    Raises:
        ValueError: the config lacks the ``ibnet_training`` section or exp_manager's checkpoints.
        FileNotFoundError: a sub-word config's ``tokenizer.dir`` holds no ``tokenizer.model``.
        ManifestCheckError: the data is unusable (before any model is built).
        NonFiniteLossError: the loss became NaN/inf (see :class:`NonFiniteLossGuard`).
    """
    if "ibnet_training" not in cfg:
        raise ValueError("the config has no `ibnet_training:` section (see configs/ibnet_c192.yaml)")
    if not cfg.exp_manager.get("create_checkpoint_callback"):
        raise ValueError("exp_manager.create_checkpoint_callback must be true: checkpoints and the .nemo come from it")
    settings = IBNetTrainingConfig(**OmegaConf.to_container(cfg.ibnet_training, resolve=True))
    is_global_zero = is_global_rank_zero()
    if settings.check_manifests:
        cfg = check_training_manifests(cfg, settings, verbose=is_global_zero)

    trainer = build_trainer(cfg.trainer)
    if cfg.exp_manager.get("resume_if_exists") and is_global_zero:
        checkpoint_dir = cfg.exp_manager.checkpoint_callback_params.get("dirpath")
        prepare_resume(checkpoint_dir or _experiment_dir(cfg) / "checkpoints")
    log_dir = Path(exp_manager(trainer, cfg.exp_manager))
    nemo_checkpoint = next(cb for cb in trainer.callbacks if isinstance(cb, NeMoModelCheckpoint))
    if settings.snapshot_every_n_epochs is not None:
        # Before exp_manager's checkpoint: a kill between the two writes leaves a snapshot newer than the last
        # checkpoint, which `prepare_resume` sets aside and the resumed run writes again. After it, the kill would
        # leave a finished epoch without its snapshot, and nothing would write it.
        trainer.callbacks.insert(
            trainer.callbacks.index(nemo_checkpoint),
            ModelCheckpoint(
                dirpath=nemo_checkpoint.dirpath,
                filename=f"{nemo_checkpoint.prefix}--snapshot-{{epoch}}",
                every_n_epochs=settings.snapshot_every_n_epochs,
                save_top_k=-1,
                save_on_train_epoch_end=True,
            ),
        )

    model = model_class(cfg.model)(cfg=cfg.model, trainer=trainer)
    model.maybe_init_from_pretrained_checkpoint(cfg)
    trainer.fit(model)
    if cfg.model.get("test_ds") is not None and cfg.model.test_ds.get("manifest_filepath") is not None:
        if model.prepare_test(trainer):
            trainer.test(model)
    return TrainingOutputs(
        log_dir=log_dir,
        checkpoint_dir=Path(nemo_checkpoint.dirpath),
        nemo_file=Path(nemo_checkpoint.dirpath) / f"{nemo_checkpoint.prefix}{nemo_checkpoint.postfix}",
    )
