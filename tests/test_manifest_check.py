"""The pre-flight manifest check: one generated manifest per problem kind, and the report's numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from ibnet_nemo.data.manifest import read_manifest, write_manifest
from ibnet_nemo.data.manifest_check import (
    EMPTY,
    MALFORMED,
    MISSING,
    OUT_OF_VOCABULARY,
    PAST_END,
    TOO_SHORT,
    UNREADABLE,
    check_manifest,
    ctc_frames_needed,
    encoder_frames,
    normalize_transcript,
)

SAMPLE_RATE = 16000
HOP = 160  # 10 ms at 16 kHz, as in the shipped configs
LABELS = list(" abcdefghijklmnopqrstuvwxyz'")


def _wav(path, seconds: float):
    sf.write(path, np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32), SAMPLE_RATE)
    return str(path)


def _check(tmp_path, records, **kwargs):
    manifest = write_manifest(tmp_path / "train.json", records)
    options = dict(
        labels=LABELS,
        sample_rate=SAMPLE_RATE,
        hop_length=HOP,
        subsampling_factor=2,
        cleaned_dir=tmp_path / "cleaned",
        max_dropped_fraction=1.0,
    )
    return check_manifest(manifest, **{**options, **kwargs})


def _good(tmp_path, count):
    return [
        {"audio_filepath": _wav(tmp_path / f"good{i}.wav", 1.0), "duration": 1.0, "text": "yes"} for i in range(count)
    ]


def test_frame_arithmetic():
    # 1 s at 16 kHz: 16000 // 160 + 1 = 101 mel frames; stride 2 -> ceil(101 / 2) = 51 encoder frames.
    assert encoder_frames(16000, HOP, 2) == 51
    assert encoder_frames(159, HOP, 2) == 1
    # "hello": 5 characters + 1 blank between the two l's.
    assert ctc_frames_needed("hello") == 6
    assert ctc_frames_needed("aaa") == 5
    assert normalize_transcript("  Hello\tWORLD \n") == "hello world"


def test_clean_manifest_is_left_alone(tmp_path):
    report = _check(tmp_path, _good(tmp_path, 3))
    assert (report.total, report.kept, sum(report.dropped.values())) == (3, 3, 0)
    assert report.cleaned_manifest is None and not report.fatal


@pytest.mark.parametrize("problem", [MISSING, UNREADABLE, EMPTY, PAST_END, MALFORMED, OUT_OF_VOCABULARY, TOO_SHORT])
def test_each_problem_is_dropped_counted_and_reported(tmp_path, problem):
    bad = {
        MISSING: {"audio_filepath": str(tmp_path / "nowhere.wav"), "duration": 1.0, "text": "yes"},
        UNREADABLE: {"audio_filepath": str(tmp_path / "noise.wav"), "duration": 1.0, "text": "yes"},
        EMPTY: {"audio_filepath": _wav(tmp_path / "empty.wav", 0.0), "duration": 0.0, "text": "yes"},
        PAST_END: {"audio_filepath": _wav(tmp_path / "short.wav", 1.0), "offset": 0.5, "duration": 2.0, "text": "yes"},
        MALFORMED: {"audio_filepath": _wav(tmp_path / "notext.wav", 1.0), "duration": 1.0},
        OUT_OF_VOCABULARY: {"audio_filepath": _wav(tmp_path / "oov.wav", 1.0), "duration": 1.0, "text": "café 42"},
        # 0.2 s -> ceil((3200 // 160 + 1) / 2) = 11 frames for a 26-character transcript.
        TOO_SHORT: {
            "audio_filepath": _wav(tmp_path / "long_text.wav", 0.2),
            "duration": 0.2,
            "text": "abcdefghijklmnopqrstuvwxyz",
        },
    }[problem]
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wave file")
    report = _check(tmp_path, [*_good(tmp_path, 3), bad])

    assert report.dropped == {problem: 1}
    assert (report.total, report.kept) == (4, 3)
    assert len(report.examples[problem]) == 1
    assert f"dropped 1: {problem}" in report.format()
    cleaned = list(read_manifest(report.cleaned_manifest))
    assert [r["audio_filepath"] for r in cleaned] == [str(tmp_path / f"good{i}.wav") for i in range(3)]
    if problem == OUT_OF_VOCABULARY:
        assert report.out_of_vocabulary == {"é": 1, "4": 1, "2": 1}
        assert "'é' x1" in report.format()


def test_segment_without_duration_is_malformed(tmp_path):
    record = {"audio_filepath": _wav(tmp_path / "seg.wav", 1.0), "offset": 0.2, "text": "yes"}
    report = _check(tmp_path, [*_good(tmp_path, 1), record])
    assert report.dropped == {MALFORMED: 1}
    assert report.examples[MALFORMED] == [f"{tmp_path / 'seg.wav'}: offset 0.2 with duration None"]


def test_unalignable_evaluation_records_are_kept_and_counted(tmp_path):
    record = {"audio_filepath": _wav(tmp_path / "a.wav", 0.2), "duration": 0.2, "text": "abcdefghijklmnopqrstuvwxyz"}
    report = _check(tmp_path, [record], drop_unalignable=False)
    assert (report.kept, report.unaligned_kept, sum(report.dropped.values())) == (1, 1, 0)


def test_normalization_and_duration_correction_are_written_and_counted(tmp_path):
    records = [
        {"audio_filepath": _wav(tmp_path / "a.wav", 1.5), "duration": 0.0, "text": "Hello  World"},
        {"audio_filepath": _wav(tmp_path / "b.wav", 1.0), "duration": 1.02, "text": "fine"},  # within tolerance
        {"audio_filepath": "c.wav", "text": "relative path"},  # no duration, path beside the manifest
        {"audio_filepath": str(tmp_path / "c.wav"), "offset": 0.0, "duration": 0.5, "text": "first segment"},
    ]
    _wav(tmp_path / "c.wav", 2.0)
    report = _check(tmp_path, records)
    assert (report.kept, report.normalized, report.corrected_durations) == (4, 1, 2)
    cleaned = list(read_manifest(report.cleaned_manifest))
    assert [r["text"] for r in cleaned] == ["hello world", "fine", "relative path", "first segment"]
    assert [r["duration"] for r in cleaned] == [1.5, 1.02, 2.0, 0.5]
    assert cleaned[2]["audio_filepath"] == str(tmp_path / "c.wav")
    assert report.cleaned_manifest == tmp_path / "cleaned" / "train.json"


def test_too_many_bad_records_is_fatal_and_writes_nothing(tmp_path):
    records = [*_good(tmp_path, 3), {"audio_filepath": str(tmp_path / "gone.wav"), "duration": 1, "text": "no"}]
    report = _check(tmp_path, records, max_dropped_fraction=0.2)
    assert report.fatal == [
        "1 of 4 records would be dropped, more than max_dropped_fraction=0.2: check the audio paths and the vocabulary"
    ]
    assert report.cleaned_manifest is None and not (tmp_path / "cleaned").exists()
    assert "FATAL" in report.format()


def test_nothing_left_is_fatal(tmp_path):
    report = _check(tmp_path, [{"audio_filepath": str(tmp_path / "gone.wav"), "duration": 1, "text": "no"}])
    assert report.fatal == ["no usable record left"]


def test_bad_arguments_and_inputs_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        check_manifest(tmp_path / "none.json", LABELS, SAMPLE_RATE, HOP, 2, tmp_path, 0.1)
    with pytest.raises(ValueError, match="max_dropped_fraction must lie in"):
        _check(tmp_path, _good(tmp_path, 1), max_dropped_fraction=1.5)
    with pytest.raises(ValueError, match="hop_length and subsampling_factor must be positive"):
        _check(tmp_path, _good(tmp_path, 1), hop_length=0)
    (tmp_path / "broken.json").write_text(json.dumps({"text": "x"}) + "\n{not json\n")
    with pytest.raises(ValueError, match="broken.json:2: not a JSON line"):
        check_manifest(tmp_path / "broken.json", LABELS, SAMPLE_RATE, HOP, 2, tmp_path, 0.1)
