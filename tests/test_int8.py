"""int8 inference on the CPU: close to fp32 on a trained model, an utterance's result independent of its batch,
a `.nemo` restored in a fresh process and quantized, the scripts' `quantize=int8` key, the benchmark's int8 rows,
and the refusals (GPU, training mode, unsupported activations and encoders)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import CONFIG_DIR, NO_DATA, REPO, SAMPLE_RATE, compose, randomize_batchnorm
from nemo.collections.asr.models import EncDecCTCModel

from ibnet_nemo import quantize as quantize_module
from ibnet_nemo.benchmark import BenchmarkSettings, ModelSpec, format_markdown, run_benchmark
from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.inference import Chunking, iter_log_probs, load_model
from ibnet_nemo.lm.arpa import build_arpa
from ibnet_nemo.quantize import quantize_int8
from ibnet_nemo.transcribe import transcribe

#: A tiny IBNet with two modules per block and a second time stride (in B2), so that strided int8 paths run.
STRIDED_IBNET = ("model.encoder.C=16", "model.encoder.repeat=2", "++model.encoder.strides=[2,1,2,1,1,1,1]")


@pytest.fixture(scope="module")
def trained_nemo(overfit_model, tmp_path_factory) -> Path:
    """The small trained IBNet as a `.nemo` file: each test restores its own copy."""
    model, _ = overfit_model
    path = tmp_path_factory.mktemp("trained") / "small_ibnet.nemo"
    model.save_to(str(path))
    return path


def _audio_files(tiny_data) -> list[str]:
    return [record["audio_filepath"] for record in read_manifest(tiny_data["train"])]


def _log_probs(model, files: list[str]) -> list[np.ndarray]:
    """Per file its log-probabilities (valid frames), from one padded batch."""
    from ibnet_nemo.inference import iter_log_probs

    (batch,) = iter_log_probs(model, [{"audio_filepath": f} for f in files], batch_size=len(files))
    return [outcome for _, outcome in batch]


def _probability_gaps(reference: list[np.ndarray], other: list[np.ndarray]) -> np.ndarray:
    """Per frame, the largest difference between the two models' output probabilities."""
    return np.concatenate([np.abs(np.exp(a) - np.exp(b)).max(axis=-1) for a, b in zip(reference, other)])


def test_int8_follows_fp32_on_a_trained_model(trained_nemo, tiny_data):
    files = _audio_files(tiny_data)
    fp32 = load_model(trained_nemo, cuda=-1)
    int8 = load_model(trained_nemo, cuda=-1, quantize="int8")
    reference, quantized = _log_probs(fp32, files), _log_probs(int8, files)

    assert [a.shape for a in reference] == [b.shape for b in quantized]
    # Measured on this model: largest gap 0.11, mean 0.002, 99.9 % of frames with the same best output. Weight
    # scales 5 % off give 0.70 / 0.019 / 99.3 %; a lost zero point or a lost rescaling, 1.0 / 0.4 or worse.
    gaps = _probability_gaps(reference, quantized)
    assert gaps.max() < 0.3 and gaps.mean() < 0.006
    agreement = np.mean(np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(reference, quantized)]))
    assert agreement > 0.995
    texts = [[h.text for h in m.transcribe(files, batch_size=4, verbose=False)] for m in (fp32, int8)]
    assert texts[0] == texts[1] and any(texts[0])


def test_a_long_recording_runs_int8_buffer_by_buffer(trained_nemo, tiny_data, tmp_path):
    # The training utterances joined into one file longer than the buffer: chunked transcription calls the
    # preprocessor, encoder and decoder itself, so the quantized encoder must serve it too.
    audio = np.concatenate([sf.read(f, dtype="float32")[0] for f in _audio_files(tiny_data)])
    path = tmp_path / "long.wav"
    sf.write(path, audio, SAMPLE_RATE)
    chunking = Chunking(chunk_len_in_secs=2.0, total_buffer_in_secs=4.0)
    assert audio.size > 2 * chunking.total_buffer_in_secs * SAMPLE_RATE
    fp32 = load_model(trained_nemo, cuda=-1)
    int8 = load_model(trained_nemo, cuda=-1, quantize="int8")
    calls = []
    engine = int8.encoder.int8_engine
    int8.encoder.int8_engine = lambda *args: calls.append(1) or engine(*args)
    reference, quantized = [
        next(iter_log_probs(model, [{"audio_filepath": str(path)}], 2, chunking=chunking))[0][1]
        for model in (fp32, int8)
    ]
    assert calls and reference.shape == quantized.shape
    assert not np.array_equal(reference, quantized)  # the int8 engine ran, not the fp32 path
    gaps = _probability_gaps([reference], [quantized])
    # Measured: largest gap 0.12, mean 0.009 (the buffers' silences included), 99.0 % of frames with the same best
    # output; with weight scales 5 % off the largest gap is 0.5-0.7.
    assert gaps.max() < 0.3 and gaps.mean() < 0.015
    assert np.mean(reference.argmax(-1) == quantized.argmax(-1)) > 0.98


def test_quantized_model_keeps_its_fp32_parameters_and_refuses_training(trained_nemo, tmp_path):
    model = load_model(trained_nemo, cuda=-1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    quantize_int8(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[key], before[key]) for key in before)

    saved = tmp_path / "saved_again.nemo"
    model.save_to(str(saved))  # the file holds the fp32 weights: restored, it runs fp32 as before
    restored = EncDecCTCModel.restore_from(str(saved), map_location="cpu")
    assert restored.encoder.int8_engine is None
    assert all(torch.equal(restored.state_dict()[key], before[key]) for key in before)

    features = torch.randn(1, 64, 40)
    with pytest.raises(RuntimeError, match="runs inference only: it cannot train"):
        model.train()(processed_signal=features, processed_signal_length=torch.tensor([40]))
    with pytest.raises(ValueError, match="eval mode"):
        quantize_int8(model)


@pytest.mark.parametrize("config_name, overrides", [("ibnet_c192", STRIDED_IBNET), ("quartznet_5x5", ())])
def test_padding_never_changes_a_valid_frame_and_an_utterance_alone_matches_its_batch(config_name, overrides):
    torch.manual_seed(0)
    model = EncDecCTCModel(cfg=compose(config_name, [*overrides, *NO_DATA]).model).eval()
    randomize_batchnorm(model)
    quantize_int8(model)
    lengths = torch.tensor([120, 77, 31])
    features, other_padding = torch.randn(3, 64, 120), torch.randn(3, 64, 120)
    for row, length in enumerate(lengths.tolist()):
        features[row, :, length:] *= 5  # garbage past each length, different in the two batches
        other_padding[row, :, :length] = features[row, :, :length]
        other_padding[row, :, length:] *= -7
    with torch.inference_mode():
        batch, batch_lengths = model.encoder(audio_signal=features, length=lengths)
        other, _ = model.encoder(audio_signal=other_padding, length=lengths)
        for row, length in enumerate(lengths.tolist()):
            alone, alone_length = model.encoder(audio_signal=features[row : row + 1, :, :length],
                                                length=lengths[row : row + 1])  # fmt: skip
            frames = int(alone_length)
            valid = batch[row, :, :frames]
            assert frames == int(batch_lengths[row])
            assert torch.equal(other[row, :, :frames], valid)  # bit for bit: the padding does not count
            # Alone, the utterance's own frames set the quantization range: the result moves within the int8
            # error (measured 0.021 of the largest value for IBNet, 0.006 for QuartzNet; 0.9 without masking).
            assert (alone[0, :, :frames] - valid).abs().max() < 0.05 * valid.abs().max()


def test_quartznet_int8_follows_fp32():
    torch.manual_seed(0)
    cfg = compose("quartznet_5x5", list(NO_DATA)).model
    fp32 = EncDecCTCModel(cfg=cfg).eval()
    randomize_batchnorm(fp32)
    int8 = EncDecCTCModel(cfg=cfg).eval()
    int8.load_state_dict(fp32.state_dict())
    quantize_int8(int8)
    features, lengths = torch.randn(2, 64, 200), torch.tensor([200, 150])
    with torch.inference_mode():
        reference, _, _ = fp32(processed_signal=features, processed_signal_length=lengths)
        quantized, _, _ = int8(processed_signal=features, processed_signal_length=lengths)
    error = (reference - quantized)[:, :75].abs().amax(-1)  # both utterances' valid frames
    spread = (reference.amax(-1) - reference.amin(-1))[:, :75]
    # Measured 0.004 of the spread of the log-probabilities; weight scales 5 % off give 0.02, a lost zero point 0.28.
    assert (error / spread).max() < 0.01
    with pytest.raises(RuntimeError, match="runs inference only: it cannot train"):
        int8.train()(processed_signal=features, processed_signal_length=lengths)


def test_a_restored_nemo_is_quantized_and_transcribed_in_a_fresh_process(trained_nemo, tiny_data, tmp_path):
    files = _audio_files(tiny_data)
    expected = [h.text for h in load_model(trained_nemo, cuda=-1, quantize="int8").transcribe(files, verbose=False)]
    script = tmp_path / "quantize_and_transcribe.py"
    script.write_text(
        textwrap.dedent(f"""
        import json
        import ibnet_nemo
        from ibnet_nemo.quantize import quantize_int8
        from nemo.collections.asr.models import EncDecCTCModel
        model = quantize_int8(EncDecCTCModel.restore_from({str(trained_nemo)!r}, map_location="cpu").eval())
        hypotheses = model.transcribe({files!r}, batch_size=8, verbose=False)
        print("HYPOTHESES=" + json.dumps([h.text for h in hypotheses]))
    """)
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("HYPOTHESES="))
    assert json.loads(line.removeprefix("HYPOTHESES=")) == expected and any(expected)


def _run_script(script: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_scripts_quantize_key(trained_nemo, tiny_data, tmp_path):
    # int8 results depend a little on the batch (its frames share the quantization range): same batches here
    model = load_model(trained_nemo, cuda=-1, quantize="int8")
    records = list(read_manifest(tiny_data["val"]))
    transcribe(model, records, tmp_path / "expected.json", batch_size=4)
    expected = [record["pred_text"] for record in read_manifest(tmp_path / "expected.json")]

    options = [f"model_path={trained_nemo}", f"dataset_manifest={tiny_data['val']}", "batch_size=4", "quantize=int8"]
    result = _run_script("transcribe_speech.py", *options, f"output_filename={tmp_path / 'int8.json'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [record["pred_text"] for record in read_manifest(tmp_path / "int8.json")] == expected

    result = _run_script("speech_to_text_eval.py", *options, f"output_filename={tmp_path / 'eval.json'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [record["pred_text"] for record in read_manifest(tmp_path / "eval.json")] == expected
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["quantize"] == "int8"

    texts = [record["text"] for record in read_manifest(tiny_data["train"])]
    lm = build_arpa(texts, tmp_path / "words.arpa", order=2)
    search = ["eval_beamsearch_ngram_ctc.py", f"nemo_model_file={trained_nemo}", f"input_manifest={tiny_data['val']}",
              f"kenlm_model_file={lm}", "beam_width=[4]", f"preds_output_folder={tmp_path / 'search'}"]  # fmt: skip
    for quantize in ("null", "int8"):
        result = _run_script(*search, f"quantize={quantize}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    caches = sorted(path.name for path in (tmp_path / "search").glob("probs_*.npz"))
    assert len(caches) == 2 and caches[1] == caches[0].replace(".npz", "_int8.npz")  # kept apart

    result = _run_script("transcribe_speech.py", *options[:3], "quantize=int4", cwd=tmp_path)
    assert result.returncode == 2
    assert "quantize must be null (fp32) or one of ['int8'], got 'int4'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_on_a_gpu_is_refused(trained_nemo, monkeypatch):
    model = load_model(trained_nemo, cuda=-1)
    monkeypatch.setattr(quantize_module, "_model_device", lambda model: torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"int8 inference runs on the CPU, but the model is on cuda:0"):
        quantize_int8(model)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a machine with one GPU
    with pytest.raises(ValueError, match="quantize=int8 runs on the CPU: leave cuda unset or set cuda=-1"):
        load_model(trained_nemo, cuda=0, quantize="int8")


def test_unsupported_models_are_refused():
    torch.manual_seed(0)
    silu = EncDecCTCModel(cfg=compose("ibnet_c192", [*STRIDED_IBNET, *NO_DATA, "model.encoder.activation=silu"]).model)
    with pytest.raises(ValueError, match="ReLU networks only, got activation SiLU"):
        quantize_int8(silu.eval())
    with pytest.raises(ValueError, match="takes an EncDecCTCModel"):
        quantize_int8(torch.nn.Linear(2, 2))


def test_the_benchmark_times_an_int8_row_next_to_each_fp32_row():
    specs = (ModelSpec("tiny IBNet", "ibnet_c192", STRIDED_IBNET),)
    settings = BenchmarkSettings(inference_shapes=((1, 1.0),), train_shape=(1, 0.5), inference_rounds=1,
                                 train_rounds=1, threads=1, quantize="int8")  # fmt: skip
    fp32, int8 = run_benchmark(CONFIG_DIR, specs, settings)
    assert (fp32.label, int8.label) == ("tiny IBNet", "tiny IBNet int8")
    assert int8.params == fp32.params and int8.rtfx["1x1s"] > 0 and np.isnan(int8.train_step_s)
    table = format_markdown([fp32, int8], settings, baseline="tiny IBNet").splitlines()
    assert table[3].startswith("| tiny IBNet int8 |") and table[3].endswith("- (inference only) | - (inference only) |")
    with pytest.raises(ValueError, match="quantize=int8 runs on the CPU without autocast"):
        BenchmarkSettings(device="cuda", quantize="int8")
