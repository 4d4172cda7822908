"""The inference scripts end to end, each in a subprocess as a user runs it, on generated audio and a tiny
(untrained, saved) IBNet model: transcribe (folder with a broken file; one file with the LM; a long recording with
timestamps and subtitles), evaluate, the LM grid search with its log-probs cache, and bad options; and the
evaluation layer the last two share."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_ibnet_model
from nemo.collections.asr.metrics.wer import word_error_rate
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig

from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.evaluate import decode_and_score, error_rates, manifest_log_probs, transcript_records
from ibnet_nemo.grid_search import cache_key, compute_or_load_log_probs
from ibnet_nemo.inference import decode_log_probs, iter_log_probs, load_model, set_decoding
from ibnet_nemo.lm.arpa import build_arpa
from ibnet_nemo.long_benchmark import build_recording


@pytest.fixture(scope="module")
def nemo_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny_ibnet.nemo"
    tiny_ibnet_model().save_to(str(path))
    return path


@pytest.fixture(scope="module")
def lm(tiny_data, tmp_path_factory) -> Path:
    texts = [r["text"] for split in ("train", "val") for r in read_manifest(tiny_data[split])]
    return build_arpa(texts, tmp_path_factory.mktemp("lm") / "words.arpa", order=3)


def _run(script: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_transcribe_folder_with_a_broken_file(nemo_file, tiny_data, tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    for record in list(read_manifest(tiny_data["val"]))[:3]:
        source = Path(record["audio_filepath"])
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "broken.wav").write_text("not audio")
    (folder / "notes.txt").write_text("not an input")

    run = _run(
        "transcribe_speech.py",
        f"model_path={nemo_file}",
        f"audio_dir={folder}",
        "output_filename=out/transcripts.json",
        "batch_size=2",
        cwd=tmp_path,
    )

    output = tmp_path / "out" / "transcripts.json"
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == (
        f"Transcribed 3 of 4 inputs, 1 failed (see their error field). Output: {output}"
    )
    assert "Traceback" not in run.stderr
    records = list(read_manifest(output))
    assert [Path(r["audio_filepath"]).name for r in records] == sorted(p.name for p in folder.glob("*.wav"))
    assert [("pred_text" in r, "error" in r) for r in records] == [(False, True)] + [(True, False)] * 3
    assert records[0]["error"].startswith("not an audio file libsndfile can read")


def test_transcribe_one_file_with_the_lm(nemo_file, lm, tiny_data, tmp_path):
    audio = next(read_manifest(tiny_data["val"]))["audio_filepath"]
    alpha, beta, beam = 2.0, 0.5, 8
    run = _run(
        "transcribe_speech.py",
        f"model_path={nemo_file}",
        f"audio_filepath={audio}",
        "ctc_decoding.strategy=pyctcdecode",
        f"ctc_decoding.beam.ngram_lm_model={lm}",
        f"ctc_decoding.beam.ngram_lm_alpha={alpha}",
        f"ctc_decoding.beam.beam_beta={beta}",
        f"ctc_decoding.beam.beam_size={beam}",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (record,) = read_manifest(tmp_path / "transcriptions.json")

    # The script decoded exactly as NeMo's pyctcdecode strategy with these settings does, unlike greedy.
    model = load_model(nemo_file, cuda=-1)
    ((_, log_probs),) = next(iter_log_probs(model, [{"audio_filepath": audio}], batch_size=1))
    greedy = decode_log_probs(model, [log_probs])[0]
    decoding = CTCDecodingConfig(strategy="pyctcdecode")
    decoding.beam.ngram_lm_model, decoding.beam.ngram_lm_alpha = str(lm), alpha
    decoding.beam.beam_beta, decoding.beam.beam_size = beta, beam
    set_decoding(model, decoding)
    assert record == {"audio_filepath": audio, "pred_text": decode_log_probs(model, [log_probs])[0]}
    assert record["pred_text"] != greedy


def test_transcribe_a_long_recording_with_timestamps_and_subtitles(nemo_file, tiny_data, tmp_path):
    records = list(read_manifest(tiny_data["val"]))
    build_recording(records * 2, tmp_path / "talk.wav", 8.0)
    run = _run(
        "transcribe_speech.py",
        f"model_path={nemo_file}",
        f"audio_filepath={tmp_path / 'talk.wav'}",
        "timestamps=true",
        "output_format=srt",
        "chunk_len_in_secs=2",
        "total_buffer_in_secs=4",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Audio seconds" in run.stderr  # the progress bar of a long input
    (record,) = read_manifest(tmp_path / "transcriptions.json")
    assert sorted(record) == ["audio_filepath", "pred_text", "segment", "srt_filepath", "word"]
    assert record["srt_filepath"] == str(tmp_path / "talk.srt") and (tmp_path / "talk.srt").is_file()
    assert " ".join(word["word"] for word in record["word"]) == record["pred_text"]
    assert all(sorted(word) == ["end", "end_offset", "start", "start_offset", "word"] for word in record["word"])
    assert all(
        sorted(segment) == ["end", "end_offset", "segment", "start", "start_offset"] for segment in record["segment"]
    )


def test_evaluation_prints_and_writes_nemo_word_error_rate(nemo_file, tiny_data, tmp_path):
    run = _run(
        "speech_to_text_eval.py",
        f"model_path={nemo_file}",
        f"dataset_manifest={tiny_data['val']}",
        "output_filename=dev_transcripts.json",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    records = list(read_manifest(tmp_path / "dev_transcripts.json"))
    assert len(records) == 6
    hypotheses, references = [r["pred_text"] for r in records], [r["text"] for r in records]
    wer, cer = word_error_rate(hypotheses, references), word_error_rate(hypotheses, references, use_cer=True)
    assert f"WER {100 * wer:.2f}%  CER {100 * cer:.2f}%  over 6 utterances." in run.stdout
    metrics = json.loads((tmp_path / "dev_transcripts_metrics.json").read_text())
    assert (metrics["wer"], metrics["cer"], metrics["scored"], metrics["failed"]) == (wer, cer, 6, 0)
    assert f"Metrics: {tmp_path / 'dev_transcripts_metrics.json'}" in run.stdout


def test_evaluation_layer_decodes_one_acoustic_pass_several_ways(nemo_file, lm, tiny_data, tmp_path):
    records = list(read_manifest(tiny_data["val"]))[:3] + [{"audio_filepath": str(tmp_path / "gone.wav"), "text": "no"}]
    references = [record["text"] for record in records]
    model = load_model(nemo_file, cuda=-1)
    log_probs, errors = manifest_log_probs(model, records, batch_size=2)
    assert errors == ["", "", "", "file not found"] and log_probs[3] is None
    decodings = {
        "greedy": {"strategy": "greedy_batch"},
        "lm": {
            "strategy": "pyctcdecode",
            "beam": {"beam_size": 8, "ngram_lm_model": str(lm), "ngram_lm_alpha": 2.0, "beam_beta": 0.5},
        },
    }
    scores = decode_and_score(model, log_probs, references, decodings, batch_size=2)

    assert list(scores) == ["greedy", "lm"]
    for name, decoding in decodings.items():
        set_decoding(model, decoding)
        expected = decode_log_probs(model, log_probs[:3])  # one batch: decoding in batches of 2 changes nothing
        assert scores[name].texts == expected + [None]
        assert (scores[name].wer, scores[name].cer) == error_rates(expected, references[:3])
    assert transcript_records(records, scores["lm"].texts, errors) == (
        [{**record, "pred_text": text} for record, text in zip(records[:3], scores["lm"].texts)]
        + [{**records[3], "error": "file not found"}]
    )


def test_grid_search_finds_the_best_setting_and_caches_log_probs(nemo_file, lm, tiny_data, tmp_path):
    run = _run(
        "eval_beamsearch_ngram_ctc.py",
        f"nemo_model_file={nemo_file}",
        f"input_manifest={tiny_data['val']}",
        f"kenlm_model_file={lm}",
        "beam_width=[2,8]",
        "beam_alpha=[0.5,2.0]",
        "beam_beta=[0.0,1.0]",
        "preds_output_folder=search",
        "acoustic_batch_size=4",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]

    with open(tmp_path / "search" / "grid_search_results.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["decoding"] for r in rows] == ["greedy"] + ["beam+lm"] * 8
    grid = rows[1:]
    assert {(int(r["beam_width"]), float(r["alpha"]), float(r["beta"])) for r in grid} == {
        (w, a, b) for w in (2, 8) for a in (0.5, 2.0) for b in (0.0, 1.0)
    }
    best = min(grid, key=lambda r: float(r["wer"]))
    assert (
        f"Best: beam_width={best['beam_width']} beam_alpha={best['alpha']} beam_beta={best['beta']} "
        f"WER {100 * float(best['wer']):.2f}%"
    ) in run.stdout
    assert f"Greedy WER {100 * float(rows[0]['wer']):.2f}%" in run.stdout
    assert f"Results: {tmp_path / 'search' / 'grid_search_results.tsv'}" in run.stdout
    predictions = list(read_manifest(tmp_path / "search" / "best_predictions.json"))
    assert word_error_rate([r["pred_text"] for r in predictions], [r["text"] for r in predictions]) == (
        pytest.approx(float(best["wer"]), abs=1e-6)
    )

    # The cache is keyed by model and manifest and is read back without the model.
    key = cache_key(nemo_file, tiny_data["val"])
    cache = tmp_path / "search" / f"probs_{key}.npz"
    assert re.search(rf"Log-probabilities cached in .*probs_{key}\.npz", run.stdout)
    records = list(read_manifest(tiny_data["val"]))
    cached, errors = compute_or_load_log_probs(None, records, cache, key, batch_size=4)
    assert errors == [""] * 6
    model = load_model(nemo_file, cuda=-1)
    fresh = [outcome for batch in iter_log_probs(model, records, 4) for _, outcome in batch]
    for a, b in zip(cached, fresh):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_options_exit_2_with_one_line_and_no_traceback(tmp_path):
    run = _run("transcribe_speech.py", "model_path=missing.nemo", f"audio_dir={tmp_path}", cwd=tmp_path)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: audio_dir {str(tmp_path)!r} holds no .wav/.flac/.ogg/.mp3 files"
    )
