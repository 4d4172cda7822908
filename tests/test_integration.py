"""NeMo integration: every shipped YAML builds and trains, `.nemo` round trips, greedy transcription."""

import json
import subprocess
import sys
import textwrap

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import CONFIG_DIR, REPO, SHIPPED_CONFIGS, compose, data_overrides, fit
from nemo.collections.asr.metrics.wer import word_error_rate
from nemo.collections.asr.models import EncDecCTCModel

from ibnet_nemo.data.manifest import read_manifest


def _transcribe(model, manifest):
    records = list(read_manifest(manifest))
    hypotheses = model.transcribe([r["audio_filepath"] for r in records], batch_size=8, verbose=False)
    return [h.text for h in hypotheses], [r["text"] for r in records]


def test_shipped_configs_differ_only_in_the_encoder_block():
    def without_encoder(name):
        config = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
        encoder = config["model"].pop("encoder")
        return config, encoder

    reference, reference_encoder = without_encoder("ibnet_c192")
    for name in SHIPPED_CONFIGS:
        config, encoder = without_encoder(name)
        assert config == reference, name
        assert encoder["_target_"] in ("ibnet_nemo.modules.IBNetEncoder", "nemo.collections.asr.modules.ConvASREncoder")
    assert reference_encoder["_target_"] == "ibnet_nemo.modules.IBNetEncoder"


@pytest.mark.parametrize("subword, char", [("ibnet_c192_bpe", "ibnet_c192"), ("demo_ibnet_bpe", "demo_ibnet")])
def test_subword_recipes_differ_from_their_char_twins_only_in_the_units_and_strides(subword, char):
    subword_config = yaml.safe_load((CONFIG_DIR / f"{subword}.yaml").read_text())
    char_config = yaml.safe_load((CONFIG_DIR / f"{char}.yaml").read_text())
    model = subword_config["model"]
    assert model.pop("tokenizer") == {"dir": "???", "type": "bpe"}
    assert model["encoder"].pop("strides") == [2, 1, 2, 1, 2, 1, 1]  # 8x
    assert model["decoder"] == {**char_config["model"]["decoder"], "num_classes": -1, "vocabulary": []}
    model["decoder"] = char_config["model"]["decoder"]
    labels = char_config["model"].pop("labels")
    for split in ("train_ds", "validation_ds", "test_ds"):
        assert char_config["model"][split].pop("labels") == labels and "labels" not in model[split]
    assert subword_config == char_config


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_each_shipped_yaml_trains_through_nemos_data_loader(name, tiny_data):
    pl.seed_everything(0)
    cfg = compose(name, data_overrides(tiny_data) + ["augment=none"])
    model = EncDecCTCModel(cfg=cfg.model)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items() if v.is_floating_point()}
    model, trainer = fit(cfg, max_steps=2)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    changed = [k for k, v in model.encoder.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert len(changed) == len(before)  # every weight and BatchNorm statistic moved


def test_a_few_dozen_steps_learn_the_tiny_set_and_greedy_transcribes_it(overfit_model, tiny_data):
    model, trainer = overfit_model
    assert trainer.callback_metrics["train_loss"] < 1.0
    hypotheses, references = _transcribe(model, tiny_data["train"])
    assert word_error_rate(hypotheses, references) < 0.1


def test_nemo_file_restores_in_a_fresh_process(overfit_model, tiny_data, tmp_path):
    model, _ = overfit_model
    path = tmp_path / "ibnet.nemo"
    model.save_to(str(path))
    hypotheses, _ = _transcribe(model, tiny_data["train"])
    audio = [r["audio_filepath"] for r in read_manifest(tiny_data["train"])]

    body = textwrap.dedent(f"""
        import json
        from nemo.collections.asr.models import EncDecCTCModel
        model = EncDecCTCModel.restore_from({str(path)!r}, map_location="cpu")
        hypotheses = model.transcribe({audio!r}, batch_size=8, verbose=False)
        print("HYPOTHESES=" + json.dumps([h.text for h in hypotheses]))
    """)
    user_script, stock_script = tmp_path / "user_script.py", tmp_path / "stock_script.py"
    user_script.write_text("import ibnet_nemo\n" + body)
    stock_script.write_text(body)  # like NeMo's own scripts: no plugin import

    def run(*args):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)

    def restored_hypotheses(result):
        assert result.returncode == 0, result.stderr[-3000:]
        line = next(line for line in result.stdout.splitlines() if line.startswith("HYPOTHESES="))
        return json.loads(line.removeprefix("HYPOTHESES="))

    assert restored_hypotheses(run(str(user_script))) == hypotheses
    refused = run(str(stock_script))
    assert refused.returncode != 0
    assert "UnsafeTargetError" in refused.stderr and "ibnet_nemo.modules.IBNetEncoder" in refused.stderr
    assert restored_hypotheses(run("-m", "ibnet_nemo", str(stock_script))) == hypotheses


def test_launcher_usage():
    result = subprocess.run([sys.executable, "-m", "ibnet_nemo"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "usage: python -m ibnet_nemo SCRIPT.py" in result.stderr
