"""Training: the entry script end to end (QuartzNet and IBNet), bf16 mixed precision, resume after SIGKILL, DDP,
checkpoints, NaN guard, augmentation variants. Scripts run in subprocesses on the tiny generated dataset."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, TINY_IBNET, compose, data_overrides, fit, make_dataset

from ibnet_nemo.data.manifest import read_manifest, write_manifest
from ibnet_nemo.data.manifest_check import ManifestCheckError
from ibnet_nemo.training import (
    INCOMPLETE_SUFFIX,
    STALE_SUFFIX,
    AtomicCheckpointIO,
    IBNetTrainingConfig,
    NonFiniteLossError,
    NonFiniteLossGuard,
    check_training_manifests,
    is_complete_checkpoint,
    prepare_resume,
    train,
)

SCRIPT = REPO / "examples" / "speech_to_text_ctc.py"
CPU = [
    "trainer.accelerator=cpu",
    "model.train_ds.num_workers=0",
    "model.validation_ds.num_workers=0",
    "model.validation_ds.batch_size=8",
    "augment=none",
]


def _command(config_name: str, data: dict[str, Path], exp_dir: Path, *overrides: str) -> list[str]:
    """The documented command form: the script's own ``--config-path=../configs``."""
    return [
        sys.executable,
        str(SCRIPT),
        "--config-path=../configs",
        f"--config-name={config_name}",
        f"model.train_ds.manifest_filepath={data['train']}",
        f"model.validation_ds.manifest_filepath={data['val']}",
        f"exp_manager.exp_dir={exp_dir}",
        *CPU,
        *overrides,
    ]


def _run(command: list[str], cwd: Path, timeout: float = 240) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _load(path: Path) -> dict:
    # A checkpoint this test's own run just wrote (its hyper-parameters are an OmegaConf object).
    return torch.load(path, map_location="cpu", weights_only=False)


def _last_checkpoint(checkpoint_dir: Path) -> Path:
    (last,) = checkpoint_dir.glob("*-last.ckpt")
    return last


@pytest.mark.parametrize("config_name", ["quartznet_5x5", "ibnet_c192"])
def test_script_trains_either_encoder_with_the_same_command(config_name, tiny_data, tmp_path):
    # 16 utterances in batches of 8: 2 steps, one validation, full-size encoders.
    output = _run(
        _command(config_name, tiny_data, tmp_path, "model.train_ds.batch_size=8", "trainer.max_epochs=1"), cwd=tmp_path
    )

    checkpoint_dir = tmp_path / config_name / "checkpoints"
    nemo_file = checkpoint_dir / f"{config_name}.nemo"
    assert f"Final model: {nemo_file}" in output
    assert f"Checkpoints (last, best by val_wer, snapshots): {checkpoint_dir}" in output
    assert _load(_last_checkpoint(checkpoint_dir))["global_step"] == 2
    assert len(list(checkpoint_dir.glob(f"{config_name}--val_wer=*-epoch=0.ckpt"))) == 1  # best by val_wer
    with tarfile.open(nemo_file) as archive:
        config = archive.extractfile("./model_config.yaml").read().decode()
    encoder = "ibnet_nemo.modules.IBNetEncoder" if config_name == "ibnet_c192" else "ConvASREncoder"
    assert encoder in config
    assert "Manifest check:" in output


@pytest.mark.parametrize(
    "accelerator",
    ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
def test_bf16_mixed_training_through_nemo_lowers_the_loss(accelerator, tiny_data):
    pl.seed_everything(0)
    overrides = data_overrides(tiny_data, batch_size=16) + [
        "augment=none",
        "model.preprocessor.dither=0.0",
        "model.optim.name=adamw",
        "model.optim.lr=0.003",
        "model.optim.betas=[0.9,0.98]",
        "model.optim.weight_decay=0.0",
        "model.optim.sched.warmup_ratio=0.05",
    ]
    losses, encoder_dtypes = [], set()

    class Record(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            pl_module.encoder.register_forward_hook(lambda module, args, output: encoder_dtypes.add(output[0].dtype))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    model, trainer = fit(
        compose("ibnet_c192", overrides), 40, accelerator=accelerator, precision="bf16-mixed", callbacks=[Record()]
    )
    assert trainer.global_step == 40 and len(losses) == 40
    assert encoder_dtypes == {torch.bfloat16}  # the convolutions ran in bf16 ...
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # ... on fp32 weights
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses


def test_resume_after_sigkill_continues_steps_optimizer_and_schedule(tiny_data, tmp_path):
    # 16 utterances in batches of 4: 4 steps an epoch, 3 epochs = 12 steps; a snapshot every 2 epochs.
    command = _command(
        "ibnet_c192",
        tiny_data,
        tmp_path,
        *TINY_IBNET,
        "model.train_ds.batch_size=4",
        "trainer.max_epochs=3",
        "ibnet_training.snapshot_every_n_epochs=2",
    )
    checkpoint_dir = tmp_path / "ibnet_c192" / "checkpoints"
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not list(checkpoint_dir.glob("*-last.ckpt")) and first.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    resume_from = _last_checkpoint(checkpoint_dir)
    resumed_step = _load(resume_from)["global_step"]
    assert resumed_step in (4, 8)

    # What a kill during a later write could leave: a truncated newer last checkpoint, a temporary file, and a
    # best checkpoint of a later epoch written just before the kill (the resumed run redoes that epoch).
    truncated = checkpoint_dir / "ibnet_c192--val_wer=0.5000-epoch=2-last.ckpt"
    truncated.write_bytes(resume_from.read_bytes()[:1000])
    (checkpoint_dir / f".{truncated.name}.x.partial").write_bytes(b"half")
    later_best = checkpoint_dir / "ibnet_c192--val_wer=0.2500-epoch=2.ckpt"
    later_best.write_bytes(resume_from.read_bytes())

    output = _run(command, cwd=tmp_path)

    assert f"Not resuming from a damaged checkpoint: {truncated}" in output
    assert f"Restoring states from the checkpoint path at {resume_from}" in output
    # Lightning reports each validation with its global step: the second run goes on from the resumed one.
    assert f"global step {resumed_step}:" not in output and "global step 12:" in output
    assert (checkpoint_dir / (truncated.name + INCOMPLETE_SUFFIX)).exists()
    assert f"Setting aside a checkpoint newer than the one resumed from: {later_best}" in output
    assert (checkpoint_dir / (later_best.name + STALE_SUFFIX)).exists()
    assert not list(checkpoint_dir.glob("*.partial"))
    final = _load(_last_checkpoint(checkpoint_dir))
    assert (final["global_step"], final["epoch"]) == (12, 3)
    assert final["lr_schedulers"][0]["last_epoch"] == 12  # the cosine schedule continued, not restarted
    assert {state["step"] for state in final["optimizer_states"][0]["state"].values()} == {12}
    # From step 8 epoch 1's snapshot is already there (written before its last checkpoint); from step 4 the resumed
    # run trains epoch 1 again and writes it.
    assert (checkpoint_dir / "ibnet_c192--snapshot-epoch=1.ckpt").exists()
    assert len(list(checkpoint_dir.glob("ibnet_c192--val_wer=*.ckpt"))) == 2  # best + last


def test_ddp_two_cpu_processes_split_the_data(tiny_data, tmp_path):
    # 16 utterances over 2 ranks in batches of 4: 2 steps an epoch (one process would take 4).
    output = _run(
        _command(
            "ibnet_c192",
            tiny_data,
            tmp_path,
            *TINY_IBNET,
            "model.train_ds.batch_size=4",
            "trainer.max_epochs=1",
            "trainer.devices=2",
            "trainer.strategy=ddp",
        ),
        cwd=tmp_path,
    )
    assert "MEMBER: 2/2" in output
    checkpoint_dir = tmp_path / "ibnet_c192" / "checkpoints"
    assert _load(_last_checkpoint(checkpoint_dir))["global_step"] == 2
    assert (checkpoint_dir / "ibnet_c192.nemo").exists()


def test_manifest_problems_stop_the_script_before_training(tiny_data, tmp_path):
    records = list(read_manifest(tiny_data["train"]))
    records[0]["audio_filepath"] = str(tmp_path / "missing.wav")
    bad = write_manifest(tmp_path / "bad.json", records)
    command = _command(
        "ibnet_c192", {**tiny_data, "train": bad}, tmp_path, *TINY_IBNET, "ibnet_training.max_dropped_fraction=0.0"
    )
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Training stopped: the training data is not usable; nothing was trained." in result.stderr
    assert f"dropped 1: missing audio file\n      e.g. {tmp_path / 'missing.wav'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ibnet_c192" / "checkpoints").exists()


def test_evaluation_manifest_named_manifest_json_is_refused_before_training(tiny_data, tmp_path):
    val = shutil.copy(tiny_data["val"], tmp_path / "manifest.json")
    cfg = compose(
        "ibnet_c192",
        [
            "name=named",
            f"model.train_ds.manifest_filepath={tiny_data['train']}",
            f"model.validation_ds.manifest_filepath={val}",
        ],
    )
    settings = IBNetTrainingConfig(snapshot_every_n_epochs=None, check_manifests=True, max_dropped_fraction=0.05)
    with pytest.raises(ManifestCheckError, match="NeMo refuses validation_ds manifests named manifest.json"):
        check_training_manifests(cfg, settings, verbose=False)
    with pytest.raises(ValueError, match="snapshot_every_n_epochs must be >= 1 or null, got 0"):
        IBNetTrainingConfig(snapshot_every_n_epochs=0, check_manifests=True, max_dropped_fraction=0.05)


def test_atomic_checkpoint_io_leaves_old_file_or_new_file_never_half(tmp_path):
    path = tmp_path / "a-last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    assert is_complete_checkpoint(path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint({"weights": torch.zeros(1000), "boom": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a-last.ckpt"]


def test_prepare_resume_picks_the_newest_complete_last_checkpoint(tmp_path):
    from nemo.utils.callbacks.nemo_model_checkpoint import NeMoModelCheckpoint

    io = AtomicCheckpointIO()
    old, new, damaged = (tmp_path / f"m--epoch={i}-last.ckpt" for i in (1, 2, 3))
    io.save_checkpoint({"step": 1}, old)
    io.save_checkpoint({"step": 2}, new)
    # NeMo's "unfinished" marker, left by a kill between the rename and the marker's removal.
    NeMoModelCheckpoint.format_checkpoint_unfinished_marker_path(new).touch()
    damaged.write_bytes(new.read_bytes()[:-10])
    (tmp_path / ".m--epoch=4-last.ckpt.abc.partial").write_bytes(b"x")
    # Best checkpoints: one of the resumed epoch (kept), one of a later epoch that a kill left behind.
    same_epoch_best, later_best = (tmp_path / f"m--val_wer=0.5-epoch={i}.ckpt" for i in (2, 3))
    for best in (same_epoch_best, later_best):
        io.save_checkpoint({"step": 2}, best)
    for age, path in enumerate((old, new, damaged)):
        path.touch()
        time.sleep(0.01 * (age + 1))

    assert not is_complete_checkpoint(damaged)
    assert prepare_resume(tmp_path) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [new.name, damaged.name + INCOMPLETE_SUFFIX, same_epoch_best.name, later_best.name + STALE_SUFFIX]
    )
    assert prepare_resume(tmp_path / "absent") is None


def _nan_dataset(root: Path) -> Path:
    """7 generated utterances and, second, one float WAV whose samples hold NaN (headers look fine)."""
    records = list(read_manifest(make_dataset(root, 7, seed=3)))
    audio = np.full(16000, np.nan, dtype=np.float32)
    sf.write(root / "nan.wav", audio, 16000, subtype="FLOAT")
    records.insert(1, {"audio_filepath": str(root / "nan.wav"), "duration": 1.0, "text": "yes"})
    return write_manifest(root / "nan_train.json", records)


def test_nan_guard_names_the_batch_files_and_writes_no_checkpoint(tiny_data, tmp_path):
    train_manifest = _nan_dataset(tmp_path / "data")
    cfg = compose(
        "ibnet_c192",
        [
            *TINY_IBNET,
            *CPU,
            "name=nan_guard",
            "trainer.devices=1",
            f"model.train_ds.manifest_filepath={train_manifest}",
            "model.train_ds.shuffle=false",
            "model.train_ds.batch_size=4",
            "trainer.max_epochs=1",
            f"exp_manager.exp_dir={tmp_path}",
            f"model.validation_ds.manifest_filepath={tiny_data['val']}",
        ],
    )
    with pytest.raises(NonFiniteLossError) as caught:
        train(cfg)
    message = str(caught.value)
    batch = [record["audio_filepath"] for record in list(read_manifest(train_manifest))[:4]]
    assert message.startswith("training loss became nan at step 0, epoch 0")
    assert message.splitlines()[1:] == [
        f"  {batch[0]}",
        f"  {batch[1]}  <- audio samples are not finite",
        f"  {batch[2]}",
        f"  {batch[3]}",
    ]
    assert not list((tmp_path / "nan_guard").rglob("*.ckpt"))


def test_an_epochs_snapshot_is_written_before_its_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    # A kill between the two writes must not lose the snapshot: written first, a resume sets it aside and writes it
    # again; written second, the resumed run would start after that epoch and never write it.
    saved, save = [], AtomicCheckpointIO.save_checkpoint

    def record_and_save(self, checkpoint, path, storage_options=None):
        saved.append(Path(path).name)
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", record_and_save)
    cfg = compose(
        "ibnet_c192",
        [
            *TINY_IBNET,
            *CPU,
            *data_overrides(tiny_data, batch_size=8),
            "name=order",
            "trainer.devices=1",
            "trainer.max_epochs=1",
            f"exp_manager.exp_dir={tmp_path}",
            "ibnet_training.snapshot_every_n_epochs=1",
        ],
    )
    train(cfg)
    last = next(i for i, name in enumerate(saved) if name.endswith("-last.ckpt"))
    assert "order--snapshot-epoch=0.ckpt" in saved[:last], saved


def test_nan_guard_refuses_to_checkpoint_non_finite_weights():
    state = {"state_dict": {"encoder.w": torch.tensor([1.0, float("inf")]), "steps": torch.tensor([3])}}
    with pytest.raises(NonFiniteLossError, match="non-finite weights: encoder.w"):
        NonFiniteLossGuard().on_save_checkpoint(None, None, state)


def _model(augment: str, train_manifest: Path, val_manifest: Path):
    from nemo.collections.asr.models import EncDecCTCModel

    cfg = compose(
        "ibnet_c192",
        [
            *TINY_IBNET,
            *CPU,
            f"augment={augment}",
            "name=augment",
            f"model.train_ds.manifest_filepath={train_manifest}",
            "model.train_ds.shuffle=false",
            f"model.validation_ds.manifest_filepath={val_manifest}",
        ],
    )
    return EncDecCTCModel(cfg=cfg.model)


def test_speed_perturbation_really_resamples(tiny_data):
    random.seed(0)  # NeMo draws the speed rate with `random`
    model = _model("speed_perturb", tiny_data["train"], tiny_data["val"])
    dataset = model._train_dl.dataset
    rates = np.array([0.9, 0.95, 1.0, 1.05, 1.1])
    ratios = []
    for index, record in enumerate(read_manifest(tiny_data["train"])):
        original = sf.info(record["audio_filepath"]).frames
        ratios.append(int(dataset[index][1]) / original)
    nearest = rates[np.abs(np.subtract.outer(ratios, rates)).argmin(axis=1)]
    assert np.allclose(ratios, nearest, atol=0.002)
    assert (nearest != 1.0).sum() >= 8  # 4 of the 5 rates change the length


@pytest.mark.parametrize("augment", ["spec_cutout", "speed_perturb_spec_cutout"])
def test_spec_cutout_skips_utterances_shorter_than_its_masks(augment, tiny_data, tmp_path):
    records = []
    for index, seconds in enumerate((0.5, 1.0, 1.5, 2.0)):
        path = tmp_path / f"tone{index}.wav"
        sf.write(path, 0.1 * np.sin(np.arange(int(seconds * 16000)) * 0.05).astype(np.float32), 16000)
        records.append({"audio_filepath": str(path), "duration": seconds, "text": "yes"})
    model = _model(augment, write_manifest(tmp_path / "train.json", records), tiny_data["val"])
    assert len(model._train_dl.dataset) == 2  # 1.5 s and 2.0 s pass min_duration (1.2 s; 1.34 s with speed 0.9)

    short = torch.zeros(1, 64, 119)  # the "empty range" the min_duration avoids
    with pytest.raises(ValueError, match="empty range"):
        model.spec_augmentation(input_spec=short, length=torch.tensor([119]))
    model.train()
    signal, signal_len, _, _ = next(iter(model._train_dl))
    log_probs, _, _ = model(input_signal=signal, input_signal_length=signal_len)
    assert torch.isfinite(log_probs).all()
