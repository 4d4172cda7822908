"""Safety: the plugin widens NeMo's ``_target_`` allow-list by its own class only, and nothing in the
package unpickles files on the user's behalf."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import NO_DATA, REPO, TINY_IBNET, compose
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from nemo.core.classes import common as nemo_common
from nemo.core.classes.common import UnsafeTargetError, safe_instantiate
from nemo.core.classes.modelPT import ModelPT
from omegaconf import OmegaConf

import ibnet_nemo
from ibnet_nemo.grid_search import compute_or_load_log_probs

# Outside classes and callables a hostile config could name: system access, a Python builtin, and plugin code
# that is importable but was never granted.
FOREIGN_TARGETS = (
    "os.system",
    "subprocess.Popen",
    "builtins.eval",
    "ibnet_nemo.parts.conv_bn.ConvBN",
    "ibnet_nemo.inference.load_model",
)


def _tiny_config():
    cfg = compose("ibnet_c192", [*TINY_IBNET, *NO_DATA])
    return cfg.model


def test_the_grant_is_exactly_the_plugins_encoder_class():
    ibnet_nemo.register()  # idempotent
    granted = [p for p in nemo_common.ALLOWED_TARGET_PREFIXES if p.startswith("ibnet_nemo")]
    assert granted == ["ibnet_nemo.modules.IBNetEncoder"]


@pytest.mark.parametrize("target", FOREIGN_TARGETS)
def test_nemo_still_refuses_a_foreign_target_after_import(target, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeTargetError, match=re.escape(target)):
        safe_instantiate(OmegaConf.create({"_target_": target, "command": f"touch {marker}", "args": ["true"]}))
    cfg = _tiny_config()
    cfg.encoder = {"_target_": target, "feat_in": 64}
    with pytest.raises(UnsafeTargetError, match=re.escape(target)):
        EncDecCTCModel(cfg=cfg)
    assert not marker.exists()


def test_a_nemo_file_naming_a_foreign_encoder_is_refused_on_restore(tmp_path):
    good = tmp_path / "good.nemo"
    EncDecCTCModel(cfg=_tiny_config()).save_to(str(good))
    hostile = tmp_path / "hostile.nemo"
    with tarfile.open(good) as source, tarfile.open(hostile, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("model_config.yaml"):
                config = yaml.safe_load(data)
                config["encoder"] = {"_target_": "subprocess.Popen", "args": ["touch", str(tmp_path / "pwned")]}
                data = yaml.safe_dump(config).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    assert isinstance(ASRModel.restore_from(str(good), map_location="cpu"), EncDecCTCModel)
    try:
        with pytest.raises(UnsafeTargetError, match="subprocess.Popen"):
            ASRModel.restore_from(str(hostile), map_location="cpu")
    finally:
        # NeMo leaves its "a model is being restored" flag set when a restore raises; every model built later in
        # this process would then skip its data loaders.
        ModelPT._set_model_restore_state(is_being_restored=False)
    assert not (tmp_path / "pwned").exists()


def test_package_and_examples_never_unpickle_on_the_users_behalf():
    sources = sorted((REPO / "ibnet_nemo").rglob("*.py")) + sorted((REPO / "examples").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        for pattern in (
            r"weights_only\s*=\s*False",
            r"allow_pickle\s*=\s*True",
            r"\bimport pickle\b",
            r"\bpickle\.loads?\(",
            r"\bdill\b",
            r"\bcloudpickle\b",
        ):
            assert not re.search(pattern, text), f"{path.relative_to(REPO)} matches {pattern}"
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path.relative_to(REPO)}: {call.group(0)}"


class _Payload:
    """Unpickling this object would create the file named in it."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_log_probs_cache_holding_pickled_objects_is_refused_not_unpickled(tmp_path):
    cache = tmp_path / "probs.npz"
    np.savez(cache, key=np.array([_Payload(tmp_path / "pwned")], dtype=object), errors=np.array([""]))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        compute_or_load_log_probs(None, [{"audio_filepath": "a.wav"}], cache, key="k", batch_size=1)
    assert not (tmp_path / "pwned").exists()
