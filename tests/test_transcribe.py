"""Robust transcription: one record per input, every broken-input kind named, other formats converted,
batch neighbours unaffected, interrupted output never looks complete, NeMo's LM decoding changes the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SAMPLE_RATE, tiny_ibnet_model
from nemo.collections.asr.models import EncDecCTCModel
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig

from ibnet_nemo import transcribe as transcribe_module
from ibnet_nemo.audio import AudioError, load_audio
from ibnet_nemo.data.manifest import read_manifest, write_manifest
from ibnet_nemo.inference import decode_log_probs, iter_log_probs, set_decoding
from ibnet_nemo.lm.arpa import build_arpa
from ibnet_nemo.transcribe import input_records, transcribe


@pytest.fixture(scope="module")
def model() -> EncDecCTCModel:
    """An untrained tiny IBNet CTC model (deterministic weights), greedy decoding."""
    return tiny_ibnet_model().eval()


@pytest.fixture
def speech() -> np.ndarray:
    """0.8 s of a chirp with some noise, peak below 0.5 (float32)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(0.8 * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.4 * np.sin(2 * np.pi * (300 + 500 * t) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _transcribe_one(model, path: Path, tmp_path: Path) -> dict:
    (record,) = _transcribe(model, [{"audio_filepath": str(path)}], tmp_path)
    return record


def _transcribe(model, records, tmp_path: Path, batch_size: int = 8) -> list[dict]:
    output = tmp_path / "out.json"
    transcribe(model, records, output, batch_size)
    return list(read_manifest(output))


# ---------------------------------------------------------------- inputs that are converted, not rejected


def test_int16_and_float_wav_and_flac_give_the_same_transcript(model, speech, tmp_path):
    ints = np.round(speech * 32767).astype(np.int16)
    pcm16 = ints / np.float32(32768)  # what libsndfile reads back from 16-bit files
    sf.write(tmp_path / "int16.wav", ints, SAMPLE_RATE, subtype="PCM_16")
    sf.write(tmp_path / "float.wav", pcm16, SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "lossless.flac", ints, SAMPLE_RATE, subtype="PCM_16")
    loaded = [load_audio(tmp_path / name, SAMPLE_RATE) for name in ("int16.wav", "float.wav", "lossless.flac")]
    for audio in loaded:
        np.testing.assert_allclose(audio, pcm16, atol=1e-6)
    texts = {
        _transcribe_one(model, tmp_path / name, tmp_path)["pred_text"]
        for name in ("int16.wav", "float.wav", "lossless.flac")
    }
    assert len(texts) == 1 and texts != {""}


def test_stereo_is_mixed_down_to_the_channel_mean(model, speech, tmp_path):
    stereo = np.stack([speech, 0.5 * speech], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", 0.75 * speech, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav", SAMPLE_RATE), 0.75 * speech, atol=1e-6)
    assert (
        _transcribe_one(model, tmp_path / "stereo.wav", tmp_path)["pred_text"]
        == _transcribe_one(model, tmp_path / "mono.wav", tmp_path)["pred_text"]
    )


@pytest.mark.parametrize("file_rate", [8000, 22050, 44100])
def test_other_sample_rates_are_resampled_to_the_models(model, file_rate, tmp_path):
    seconds, frequency = 0.5, 440.0
    t = np.arange(int(seconds * file_rate)) / file_rate
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * frequency * t), file_rate, subtype="PCM_16")
    audio = load_audio(tmp_path / "tone.wav", SAMPLE_RATE)
    assert audio.dtype == np.float32 and audio.size == int(seconds * SAMPLE_RATE)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(audio.size, 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(frequency, abs=2.0)
    assert "pred_text" in _transcribe_one(model, tmp_path / "tone.wav", tmp_path)


def test_silence_is_transcribed_as_empty_text(model, tmp_path):
    """All-zero audio goes through the model (zero-variance features stay finite) and yields no words."""
    sf.write(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    blank_model = EncDecCTCModel(cfg=model.cfg).eval()
    with torch.no_grad():  # a decoder that emits CTC blank (the last class) unless it hears something
        final = blank_model.decoder.decoder_layers[-1]
        final.weight.mul_(0.01)
        final.bias.zero_()
        final.bias[-1] = 10.0
    assert _transcribe_one(blank_model, tmp_path / "silence.wav", tmp_path) == {
        "audio_filepath": str(tmp_path / "silence.wav"),
        "pred_text": "",
    }


# ---------------------------------------------------------------- broken inputs: one record each, a clear reason


def _write_broken_inputs(folder: Path, speech: np.ndarray) -> dict[str, str]:
    """Each broken-input kind as a file (name -> the start of the expected error)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is a text file, not a RIFF/WAVE file\n")
    sf.write(folder / "full.wav", speech, SAMPLE_RATE, subtype="PCM_16")
    full = (folder / "full.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(full[: len(full) // 2])
    sf.write(folder / "full.flac", speech, SAMPLE_RATE, subtype="PCM_16")
    flac = (folder / "full.flac").read_bytes()
    (folder / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    nan = speech.copy()
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    inf = speech.copy()
    inf[200] = np.inf
    sf.write(folder / "inf.wav", inf, SAMPLE_RATE, subtype="FLOAT")
    sf.write(folder / "no_samples.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    sf.write(folder / "too_short.wav", speech[:80], SAMPLE_RATE, subtype="PCM_16")  # 5 ms: no output frame
    return {
        "missing.wav": "file not found",
        "empty.wav": "file is empty (0 bytes)",
        "text.wav": "not an audio file libsndfile can read",
        "truncated.wav": f"truncated: the header declares {2 * speech.size} data bytes, the file holds",
        "truncated.flac": "audio data is truncated or corrupt",
        "nan.wav": "non-finite samples (NaN or Inf)",
        "inf.wav": "non-finite samples (NaN or Inf)",
        "no_samples.wav": "no audio samples",
        "too_short.wav": "too short to produce an output frame (0.005 s)",
    }


def test_every_broken_input_kind_gets_one_error_record_and_its_batch_neighbours_are_transcribed(
    model, speech, tmp_path
):
    expected = _write_broken_inputs(tmp_path / "audio", speech)
    good = tmp_path / "audio" / "full.wav"
    names = [name for broken in expected for name in (broken, "full.wav")]  # every broken file beside a good one
    records = [{"audio_filepath": str(tmp_path / "audio" / name), "id": i} for i, name in enumerate(names)]
    records.insert(3, {"id": "no path"})
    records.insert(5, {"audio_filepath": str(tmp_path / "audio"), "id": "a folder"})
    output = tmp_path / "out.json"

    summary = transcribe(model, records, output, batch_size=4)

    results = list(read_manifest(output))
    assert [r["id"] for r in results] == [r["id"] for r in records]  # one record per input, in input order
    alone = _transcribe_one(model, good, tmp_path / "alone")["pred_text"]
    reasons = {}
    for record, result in zip(records, results):
        assert ("pred_text" in result) != ("error" in result)
        if record.get("audio_filepath") == str(good):
            assert result["pred_text"] == alone
        else:
            assert "\n" not in result["error"]
            reasons[Path(record.get("audio_filepath", "-")).name] = result["error"]
    for name, reason in expected.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    assert reasons["-"] == "the record has no audio_filepath"
    assert reasons["audio"] == "not a regular file"
    assert (summary.transcribed, summary.failed) == (len(expected), len(expected) + 2)
    assert str(summary) == (
        f"Transcribed {len(expected)} of {len(records)} inputs, {len(expected) + 2} failed "
        f"(see their error field). Output: {output.resolve()}"
    )


def test_a_model_failure_costs_only_the_failing_input(model, speech, tmp_path, monkeypatch):
    poison_length = 12345  # the model fails on any batch holding an input of exactly this many samples
    sf.write(tmp_path / "good.wav", speech, SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "poison.wav", speech[:poison_length], SAMPLE_RATE, subtype="FLOAT")
    alone = _transcribe_one(model, tmp_path / "good.wav", tmp_path)["pred_text"]
    forward = model.forward

    def failing_forward(input_signal, input_signal_length):
        if (input_signal_length == poison_length).any():
            raise RuntimeError("simulated\nkernel failure")
        return forward(input_signal=input_signal, input_signal_length=input_signal_length)

    monkeypatch.setattr(model, "forward", failing_forward)
    names = ["good.wav", "poison.wav", "good.wav"]
    results = _transcribe(model, [{"audio_filepath": str(tmp_path / n)} for n in names], tmp_path)
    assert [r.get("pred_text") for r in results] == [alone, None, alone]
    assert results[1]["error"] == "the model failed on this input (RuntimeError: simulated kernel failure)"


def test_debug_raises_the_first_failure(model, tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        next(iter_log_probs(model, [{"audio_filepath": str(tmp_path / "missing.wav")}], 1, debug=True))


def test_an_interrupted_run_leaves_only_a_partial_file_of_complete_records(model, speech, tmp_path, monkeypatch):
    sf.write(tmp_path / "a.wav", speech, SAMPLE_RATE)
    records = [{"audio_filepath": str(tmp_path / "a.wav"), "id": i} for i in range(6)]
    decoded_batches = []

    def interrupted_decode(model, log_probs):
        if decoded_batches:
            raise KeyboardInterrupt
        decoded_batches.append(len(log_probs))
        return decode_log_probs(model, log_probs)

    monkeypatch.setattr(transcribe_module, "decode_log_probs", interrupted_decode)
    output = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        transcribe(model, records, output, batch_size=2)
    assert not output.exists()
    partial = (tmp_path / "out.json.partial").read_text().splitlines()
    assert [json.loads(line)["id"] for line in partial] == [0, 1]


def test_output_is_renamed_into_place_when_complete(model, speech, tmp_path):
    sf.write(tmp_path / "a.wav", speech, SAMPLE_RATE)
    output = tmp_path / "nested" / "out.json"
    transcribe(model, [{"audio_filepath": str(tmp_path / "a.wav")}], output, batch_size=1)
    assert output.is_file() and not (tmp_path / "nested" / "out.json.partial").exists()


def test_transcribing_an_earlier_output_replaces_its_results(model, speech, tmp_path):
    sf.write(tmp_path / "fixed.wav", speech, SAMPLE_RATE)
    earlier = [
        {"audio_filepath": str(tmp_path / "fixed.wav"), "error": "file not found"},
        {"audio_filepath": str(tmp_path / "gone.wav"), "pred_text": "old text"},
    ]
    results = _transcribe(model, earlier, tmp_path)
    assert [sorted(r) for r in results] == [["audio_filepath", "pred_text"], ["audio_filepath", "error"]]
    assert results[1]["error"] == "file not found"


# ---------------------------------------------------------------- input sources


def test_input_records_from_folder_manifest_and_single_file(tmp_path):
    for name in ("b.wav", "a.flac", "c.WAV", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [Path(r["audio_filepath"]).name for r in input_records(audio_dir=tmp_path)] == ["a.flac", "b.wav", "c.WAV"]
    manifest = write_manifest(
        tmp_path / "m.json", [{"audio_filepath": "b.wav", "text": "x"}, {"audio_filepath": "elsewhere.wav"}]
    )
    assert input_records(dataset_manifest=manifest) == [
        {"audio_filepath": str(tmp_path / "b.wav"), "text": "x"},
        {"audio_filepath": "elsewhere.wav"},
    ]
    assert input_records(audio_filepath="one.wav") == [{"audio_filepath": "one.wav"}]
    with pytest.raises(ValueError, match=r"exactly one of .* got \['audio_dir', 'audio_filepath'\]"):
        input_records(audio_dir=tmp_path, audio_filepath="one.wav")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .wav/.flac/.ogg/.mp3 files"):
        input_records(audio_dir=tmp_path / "empty")


# ---------------------------------------------------------------- decoding with a word n-gram LM (NeMo's pyctcdecode)


def _crafted_log_probs(model, frames: list[dict[str, float]]) -> np.ndarray:
    """CTC log-probs ``(T, V + 1)``: per frame the given token probabilities, the rest spread evenly."""
    vocabulary = list(model.decoder.vocabulary) + ["<blank>"]
    probs = np.zeros((len(frames), len(vocabulary)))
    for row, frame in zip(probs, frames):
        rest = (1.0 - sum(frame.values())) / (len(vocabulary) - len(frame))
        row[:] = rest
        for token, p in frame.items():
            row[vocabulary.index(token)] = p
    return np.log(probs).astype(np.float32)


def test_lm_beam_search_picks_the_in_vocabulary_word_greedy_misses(model, tmp_path):
    blank = {"<blank>": 0.95}
    frames = []
    for token in ["t", "h", "e", " ", "c", "ambiguous", "t"]:
        frames += [{"e": 0.55, "a": 0.40} if token == "ambiguous" else {token: 0.95}, blank]
    log_probs = _crafted_log_probs(model, frames)
    lm = build_arpa(["the cat sat", "the cat ran", "a cat and the hat"] * 3, tmp_path / "lm.arpa", order=3)

    set_decoding(model, CTCDecodingConfig())
    assert decode_log_probs(model, [log_probs]) == ["the cet"]
    beam = CTCDecodingConfig(strategy="pyctcdecode")
    beam.beam.beam_size, beam.beam.ngram_lm_model, beam.beam.ngram_lm_alpha, beam.beam.beam_beta = 16, str(lm), 1.0, 0.0
    set_decoding(model, beam)
    try:
        assert decode_log_probs(model, [log_probs]) == ["the cat"]
        beam.beam.ngram_lm_model = None  # the same beam search without the LM keeps the acoustic choice
        set_decoding(model, beam)
        assert decode_log_probs(model, [log_probs]) == ["the cet"]
    finally:
        set_decoding(model, CTCDecodingConfig())


def test_an_upper_case_lm_is_refused_with_the_conversion_command(model, tmp_path):
    lm = build_arpa(["THE CAT SAT"], tmp_path / "upper.arpa")
    beam = CTCDecodingConfig(strategy="pyctcdecode")
    beam.beam.ngram_lm_model = str(lm)
    with pytest.raises(ValueError, match=r"python -m ibnet_nemo.lm.arpa lowercase .*upper.arpa upper_lower.arpa"):
        set_decoding(model, beam)
    beam.beam.ngram_lm_model = str(tmp_path / "missing.arpa")
    with pytest.raises(ValueError, match="missing.arpa'?: no such file"):
        set_decoding(model, beam)
