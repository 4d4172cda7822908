"""Long recordings: chunked log-probabilities equal one forward pass over the whole input where the context covers
the model's receptive field (character and sub-word models, resampled files); buffer normalization; pauses as
word boundaries; word and segment times of known words (greedy and LM); SRT / WebVTT / CTM files; a long file
damaged part-way keeps its transcript up to the damage; two hours of audio in flat memory; the options checked."""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SAMPLE_RATE, SMALL_IBNET, WORDS, compose, word_spans
from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE
from nemo.collections.asr.parts.preprocessing.features import normalize_batch
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig
from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model
from omegaconf import open_dict

from ibnet_nemo.audio import AudioReader, load_audio
from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.inference import (
    Chunking,
    ChunkLayout,
    chunked_log_probs,
    decode_log_probs,
    iter_log_probs,
    load_model,
    normalize_buffer_features,
    set_decoding,
)
from ibnet_nemo.lm.arpa import build_arpa
from ibnet_nemo.long_benchmark import RecordingUtterance, build_recording, first_word_offsets
from ibnet_nemo.timestamps import subtitle_segments, timed_transcripts
from ibnet_nemo.transcribe import TranscriptionConfig, run_transcription, transcribe

# C1 (kernel 11, stride 2) and kernels 11..15 reach 39 output frames (0.78 s) to either side: 1 s of context
# on each side of a chunk covers the receptive field of the models below.
CONTEXT = 1.0
WHOLE = Chunking(3600.0, 3600.0)  # every test input runs as one sequence


def _untrained(model_class=EncDecCTCModel, overrides=(), **cfg_updates) -> EncDecCTCModel:
    torch.manual_seed(0)
    cfg = compose(
        "ibnet_c192",
        [
            "model.encoder.C=16",
            *SMALL_IBNET[1:],
            "model.train_ds.manifest_filepath=null",
            "model.validation_ds.manifest_filepath=null",
            *overrides,
        ],
    )
    with open_dict(cfg.model):
        cfg.model.update(cfg_updates)
    return model_class(cfg=cfg.model).eval()


@pytest.fixture(scope="module")
def plain_model() -> EncDecCTCModel:
    """An untrained tiny IBNet whose features are not normalized: a buffer's frames are then those of the whole
    input, wherever the buffer lies."""
    return _untrained(overrides=["model.preprocessor.normalize=null"])


@pytest.fixture(scope="module")
def model() -> EncDecCTCModel:
    """An untrained tiny IBNet with the recipes' per-feature normalization, greedy decoding."""
    return _untrained()


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory) -> EncDecCTCModelBPE:
    """An untrained tiny sub-word (BPE) IBNet without feature normalization; its tokens mark word starts with ▁."""
    folder = tmp_path_factory.mktemp("bpe")
    rng = np.random.default_rng(0)
    (folder / "text.txt").write_text("\n".join(" ".join(rng.choice(WORDS, 3)) for _ in range(200)) + "\n")
    create_spt_model(
        str(folder / "text.txt"),
        vocab_size=24,
        sample_size=-1,
        do_lower_case=True,
        output_dir=str(folder / "tokenizer"),
        tokenizer_type="bpe",
    )
    overrides = ["model.preprocessor.normalize=null", "model.decoder.num_classes=-1", "model.decoder.vocabulary=null"]
    return _untrained(EncDecCTCModelBPE, overrides, tokenizer={"dir": str(folder / "tokenizer"), "type": "bpe"})


@pytest.fixture(scope="module")
def trained(overfit_model, tmp_path_factory) -> EncDecCTCModel:
    """The small IBNet trained on the tiny set (it transcribes its training utterances), restored as users do."""
    path = tmp_path_factory.mktemp("trained") / "ibnet.nemo"
    overfit_model[0].save_to(str(path))
    return load_model(path, cuda=-1)


def _tones(seconds: float, seed: int = 0) -> np.ndarray:
    """Tone bursts of random pitch and length between silences, with a little noise (float32)."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(round(seconds * SAMPLE_RATE))
    position = 0
    while position < audio.size:
        length = int(rng.uniform(0.1, 0.6) * SAMPLE_RATE)
        t = np.arange(min(length, audio.size - position)) / SAMPLE_RATE
        audio[position : position + t.size] = 0.4 * np.sin(2 * np.pi * rng.uniform(150, 2000) * t)
        position += t.size + int(rng.uniform(0.05, 0.8) * SAMPLE_RATE)
    return (audio + 0.003 * rng.standard_normal(audio.size)).astype(np.float32)


def _one_pass(model, path: Path) -> np.ndarray:
    ((_, log_probs),) = next(iter_log_probs(model, [{"audio_filepath": str(path)}], 1, chunking=WHOLE))
    return log_probs


def _chunked(model, path: Path, chunking: Chunking, batch_size: int = 3) -> np.ndarray:
    with AudioReader(path, model.cfg.sample_rate) as reader:
        return chunked_log_probs(model, reader, chunking, batch_size, progress=False)


# ---------------------------------------------------------------- chunks join into the whole input's frames


@pytest.mark.parametrize("extra_samples", [0, 123, 319, 320])  # 320 samples: one output frame
@pytest.mark.parametrize("chunk, total", [(2.0, 4.0), (1.0, 3.5), (5.0, 7.0)])
def test_chunked_log_probs_equal_one_forward_pass_over_the_whole_input(
    plain_model, chunk, total, extra_samples, tmp_path
):
    audio = _tones(12.0)
    sf.write(tmp_path / "long.wav", np.concatenate([audio, audio[:extra_samples]]), SAMPLE_RATE, subtype="FLOAT")
    whole = _one_pass(plain_model, tmp_path / "long.wav")
    chunked = _chunked(plain_model, tmp_path / "long.wav", Chunking(chunk, total))
    assert chunked.shape == whole.shape  # every frame once: none lost or doubled at a chunk boundary
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert decode_log_probs(plain_model, [chunked]) == decode_log_probs(plain_model, [whole])


def test_chunk_lengths_are_whole_output_frames(plain_model, bpe_model):
    layout = ChunkLayout.of(plain_model, Chunking(1.0, 3.5))
    assert (layout.frame_samples, layout.chunk_frames, layout.context_frames) == (320, 50, 62)  # 10 ms hop x 2
    assert layout.buffer_samples == (50 + 2 * 62) * 320
    assert ChunkLayout.of(bpe_model, Chunking(16.0, 20.0)).chunk_frames == 800
    with pytest.raises(ValueError, match="total_buffer_in_secs must be >= chunk_len_in_secs"):
        Chunking(4.0, 3.0)
    with pytest.raises(ValueError, match="chunk_len_in_secs must be positive"):
        Chunking(0.0, 3.0)


def test_a_sub_word_model_and_a_resampled_file_chunk_the_same_way(bpe_model, tmp_path):
    file_rate = 22050
    t = np.arange(int(9.5 * file_rate)) / file_rate
    tones = np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t)) * t) * (np.sin(2 * np.pi * 0.9 * t) > 0)
    sf.write(tmp_path / "long.wav", 0.4 * tones, file_rate, subtype="FLOAT")
    with AudioReader(tmp_path / "long.wav", SAMPLE_RATE) as reader:
        blocks = list(reader.blocks())
    assert len(blocks) >= 9  # read in blocks, and the resampled blocks join into the whole file resampled
    np.testing.assert_allclose(np.concatenate(blocks), load_audio(tmp_path / "long.wav", SAMPLE_RATE), atol=1e-6)
    whole = _one_pass(bpe_model, tmp_path / "long.wav")
    chunked = _chunked(bpe_model, tmp_path / "long.wav", Chunking(2.0, 2.0 + 2 * CONTEXT))
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_inputs_longer_than_the_buffer_are_chunked_and_the_rest_run_whole(plain_model, tmp_path):
    sf.write(tmp_path / "long.wav", _tones(6.0), SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", _tones(1.5, seed=1), SAMPLE_RATE, subtype="FLOAT")
    chunking = Chunking(1.0, 3.0)
    records = [{"audio_filepath": str(tmp_path / name)} for name in ("short.wav", "long.wav", "short.wav")]
    outcomes = [outcome for batch in iter_log_probs(plain_model, records, 2, chunking=chunking) for _, outcome in batch]
    np.testing.assert_allclose(outcomes[1], _chunked(plain_model, tmp_path / "long.wav", chunking), atol=0)
    np.testing.assert_allclose(outcomes[0], _one_pass(plain_model, tmp_path / "short.wav"), atol=1e-6)
    np.testing.assert_array_equal(outcomes[0], outcomes[2])


# ---------------------------------------------------------------- features normalized as training saw them


def test_buffer_statistics_leave_out_the_middle_of_long_silences(model):
    frames_per_second = 100  # 10 ms hop
    rng = np.random.default_rng(0)

    def speech(seconds):
        return torch.from_numpy(rng.normal(2.0, 1.5, (64, round(seconds * frames_per_second))))

    def silence(seconds):
        return torch.full((64, round(seconds * frames_per_second)), float(np.log(2.0**-24)))

    pieces = [speech(1.0), silence(0.2), speech(0.8), silence(1.5), speech(1.2)]  # a short and a long pause
    features = torch.cat(pieces, dim=1)[None].float()
    padded = torch.cat([features, torch.zeros(1, 64, 16)], dim=2)  # a padded batch row
    lengths = torch.tensor([features.shape[2]])

    normalized = normalize_buffer_features(padded, lengths, model)

    # The statistics: all frames but the long pause's middle (0.1 s of it kept at either end), NeMo's arithmetic.
    long_pause = slice(200, 350)
    counted = torch.cat([features[:, :, : long_pause.start + 10], features[:, :, long_pause.stop - 10 :]], dim=2)
    _, mean, std = normalize_batch(counted, torch.tensor([counted.shape[2]]), "per_feature")
    np.testing.assert_allclose(
        normalized[:, :, : lengths[0]], (features - mean[:, :, None]) / std[:, :, None], atol=1e-4
    )
    assert torch.all(normalized[:, :, lengths[0] :] == 0)  # padding stays zero
    # Without a long pause, exactly NeMo's per-feature normalization.
    short = torch.cat(pieces[:3], dim=1)[None].float()
    np.testing.assert_allclose(
        normalize_buffer_features(short, torch.tensor([short.shape[2]]), model),
        normalize_batch(short, torch.tensor([short.shape[2]]), "per_feature")[0],
        atol=1e-5,
    )


# ---------------------------------------------------------------- pauses are word boundaries; word times


def _log_probs(model, frames: list[str]) -> np.ndarray:
    """Confident CTC log-probs ``(T, V + 1)``: per frame one token of the model's vocabulary, ``-`` for blank."""
    vocabulary = list(model.decoder.vocabulary)
    probs = np.full((len(frames), len(vocabulary) + 1), 0.01 / len(vocabulary))
    for row, token in zip(probs, frames):
        row[len(vocabulary) if token == "-" else vocabulary.index(token)] = 0.99
    return np.log(probs).astype(np.float32)


def test_a_long_pause_is_a_word_boundary_and_words_are_timed_by_their_frames(model):
    set_decoding(model, CTCDecodingConfig())
    frames = [*"-no- -yees", *"-" * 5, *"one", *"-" * 30, *"two"]
    log_probs = _log_probs(model, frames)
    assert decode_log_probs(model, [log_probs]) == ["no yesone two"]  # 5 blank frames: 0.1 s; 30: 0.6 s
    (transcript,) = timed_transcripts(model, [log_probs])
    assert transcript.text == "no yesone two"
    assert [(w["word"], w["start_offset"], w["end_offset"]) for w in transcript.words] == [
        ("no", 1, 3),
        ("yesone", 6, 18),
        ("two", 48, 51),
    ]
    assert [(w["start"], w["end"]) for w in transcript.words] == [(0.02, 0.06), (0.12, 0.36), (0.96, 1.02)]
    assert transcript.segments == [  # the pause also ends a subtitle segment
        {"segment": "no yesone", "start_offset": 1, "end_offset": 18, "start": 0.02, "end": 0.36},
        {"segment": "two", "start_offset": 48, "end_offset": 51, "start": 0.96, "end": 1.02},
    ]


def test_sub_word_tokens_are_grouped_into_words_at_their_word_marker(bpe_model):
    set_decoding(bpe_model, CTCDecodingConfig())
    frames, expected = ["-"], []
    for word, pause in (("hello", 1), ("five", 30), ("yes", 1)):
        tokens = bpe_model.tokenizer.text_to_tokens(word)
        assert tokens[0].startswith("▁")
        expected.append((word, len(frames), len(frames) + len(tokens)))
        frames += tokens + ["-"] * pause
    (transcript,) = timed_transcripts(bpe_model, [_log_probs(bpe_model, frames)])
    assert transcript.text == "hello five yes"  # no space token: a long pause needs no word boundary
    assert [(w["word"], w["start_offset"], w["end_offset"]) for w in transcript.words] == expected


def test_words_of_known_utterances_are_timed_on_their_known_spans(trained, tiny_data, tmp_path):
    records = list(read_manifest(tiny_data["train"]))
    log_probs = [outcome for batch in iter_log_probs(trained, records, 8) for _, outcome in batch]
    lm = build_arpa([r["text"] for r in records], tmp_path / "lm.arpa", order=2)
    beam = CTCDecodingConfig(strategy="pyctcdecode")
    beam.beam.beam_size, beam.beam.ngram_lm_model, beam.beam.ngram_lm_alpha = 8, str(lm), 0.5
    transcripts = {}
    for name, decoding in (("greedy", CTCDecodingConfig()), ("lm", beam)):
        set_decoding(trained, decoding)
        transcripts[name] = timed_transcripts(trained, log_probs)
    set_decoding(trained, CTCDecodingConfig())

    start_errors = []
    for record, greedy, with_lm in zip(records, transcripts["greedy"], transcripts["lm"]):
        known = [(word, start / SAMPLE_RATE, end / SAMPLE_RATE) for word, start, end in word_spans(record["text"])]
        assert greedy.text == with_lm.text == record["text"]
        for word, lm_word in zip(greedy.words, with_lm.words):  # the beam's best path lies close to greedy's
            assert abs(word["start_offset"] - lm_word["start_offset"]) <= 3
            assert abs(word["end_offset"] - lm_word["end_offset"]) <= 3
        assert [segment["segment"] for segment in greedy.segments] == [record["text"]]
        for index, (word, (text, start, end)) in enumerate(zip(greedy.words, known)):
            assert word["word"] == text
            middle = (word["start"] + word["end"]) / 2
            distances = [max(0.0, span_start - middle, middle - span_end) for _, span_start, span_end in known]
            assert min(range(len(known)), key=distances.__getitem__) == index  # nearest its own span
            assert abs(word["start"] - start) <= 0.15 and abs(word["end"] - end) <= 0.2  # words: 0.24-0.32 s
            start_errors.append(word["start"] - start)
    assert abs(np.median(start_errors)) <= 0.06  # three output frames


def test_subtitle_segments_stay_short(model):
    def words(*specs):
        return [
            {"word": w, "start_offset": round(s * 50), "end_offset": round(e * 50), "start": s, "end": e}
            for w, s, e in specs
        ]

    long_words = words(*((f"word{i:02d}", 0.3 * i, 0.3 * i + 0.25) for i in range(12)))
    assert [s["segment"] for s in subtitle_segments(long_words)] == [  # at most 42 characters
        "word00 word01 word02 word03 word04 word05",
        "word06 word07 word08 word09 word10 word11",
    ]
    slow = words(("a", 0.0, 2.0), ("b", 2.1, 4.0), ("c", 4.1, 5.5), ("d", 5.6, 6.0))
    assert [s["segment"] for s in subtitle_segments(slow)] == ["a b", "c d"]  # at most 5 s
    assert [s["segment"] for s in subtitle_segments(words(("a", 0, 0.2), ("b.", 0.3, 0.5), ("c", 0.6, 0.7)))] == [
        "a b.",
        "c",
    ]  # NeMo's segment separators end a segment
    assert subtitle_segments(words(("x", 1.0, 1.2), ("y", 1.7, 1.9)))[1] == {
        "segment": "y",
        "start_offset": 85,
        "end_offset": 95,
        "start": 1.7,
        "end": 1.9,
    }  # a 0.5 s pause


# ---------------------------------------------------------------- files for subtitles and alignments


_SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n")
_VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n")


def _seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


@pytest.mark.parametrize("output_format", ["srt", "vtt", "ctm"])
def test_subtitle_and_ctm_files_are_well_formed(trained, tiny_data, output_format, tmp_path):
    records = list(read_manifest(tiny_data["train"]))
    (tmp_path / "audio").mkdir()
    build_recording(records, tmp_path / "audio" / "meeting.wav", 24.0)
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "meeting.wav"  # the same name in another folder
    twin.write_bytes(Path(records[0]["audio_filepath"]).read_bytes())
    inputs = [
        {"audio_filepath": str(tmp_path / "audio" / "meeting.wav")},
        {"audio_filepath": str(twin)},
        {"audio_filepath": str(tmp_path / "missing.wav")},
    ]
    output = tmp_path / "out" / "transcripts.json"

    transcribe(trained, inputs, output, 4, chunking=Chunking(2.0, 4.0), timestamps=True, output_format=output_format)

    results = list(read_manifest(output))
    key = f"{output_format}_filepath"
    assert [Path(r[key]).name for r in results[:2]] == [f"meeting.{output_format}", f"meeting-2.{output_format}"]
    assert key not in results[2] and "word" not in results[2]
    for result in results[:2]:
        path = Path(result[key])
        assert path.parent == output.parent
        text = path.read_text(encoding="utf-8")
        if output_format == "ctm":
            lines = [line.split(" ") for line in text.splitlines()]
            assert [fields[4] for fields in lines] == [w["word"] for w in result["word"]]
            for fields, word in zip(lines, result["word"]):
                assert fields[:2] == [path.stem, "1"]
                assert float(fields[2]) == pytest.approx(word["start"], abs=0.005)
                assert 0 < float(fields[3]) == pytest.approx(word["end"] - word["start"], abs=0.011)
            continue
        if output_format == "vtt":
            assert text.startswith("WEBVTT\n\n")
            cues = [(_seconds(*c[0:4]), _seconds(*c[4:8]), c[8]) for c in _VTT_CUE.findall(text)]
        else:
            found = _SRT_CUE.findall(text)
            assert [int(c[0]) for c in found] == list(range(1, len(found) + 1))
            cues = [(_seconds(*c[1:5]), _seconds(*c[5:9]), c[9]) for c in found]
        assert len(text.split("\n\n")) - 1 == len(cues) + (output_format == "vtt")  # nothing outside the cues
        assert [cue[2] for cue in cues] == [s["segment"] for s in result["segment"]]
        assert " ".join(cue[2] for cue in cues) == " ".join(result["pred_text"].split())
        for (start, end, words), (next_start, _, _) in zip(cues, cues[1:] + [(np.inf, 0, "")]):
            assert 0 <= start < end <= next_start and len(words) <= 42 and end - start <= 5.0


def test_first_words_are_found_per_utterance_of_a_joined_recording():
    utterances = [
        RecordingUtterance("a b", 0.0, 1.5, 0.2),
        RecordingUtterance("c", 2.0, 3.5, 2.1),
        RecordingUtterance("d", 4.0, 5.0, 4.3),
    ]  # 0.5 s of silence between them
    words = [{"word": w, "start": s} for w, s in (("a", 0.25), ("b", 0.9), ("c", 1.8), ("x", 3.7), ("d", 3.8))]
    # Each word belongs to the utterance within whose span it starts, the spans split half-way through the gaps.
    assert first_word_offsets(words, utterances) == pytest.approx([0.05, -0.3, -0.5])


# ---------------------------------------------------------------- damaged long files


def test_a_long_file_damaged_part_way_keeps_its_transcript_up_to_the_damage(model, tmp_path):
    audio = _tones(30.0, seed=3)
    chunking = Chunking(2.0, 4.0)
    sf.write(tmp_path / "full.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: 44 + 2 * 18 * SAMPLE_RATE])  # the header still declares 30 s
    sf.write(tmp_path / "full.flac", audio, SAMPLE_RATE, subtype="PCM_16")
    flac = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (tmp_path / "head.flac").write_bytes(flac[:200])  # damaged before its first block
    names = ["cut.wav", "full.wav", "cut.flac", "head.flac"]
    output = tmp_path / "out.json"

    summary = transcribe(model, [{"audio_filepath": str(tmp_path / n)} for n in names], output, 2, chunking=chunking)

    results = list(read_manifest(output))
    assert (summary.transcribed, summary.failed) == (1, 3)
    assert results[0]["error"] == (
        f"truncated: the header declares {2 * audio.size} data bytes, the file holds "
        f"{2 * 18 * SAMPLE_RATE} (audio ends at 18.00 s); transcribed up to 18.00 s"
    )
    match = re.fullmatch(
        r"audio data is truncated or corrupt after (\d+\.\d\d) s \(.*\); transcribed up to (\S+) s", results[2]["error"]
    )
    assert match and match[1] == match[2] and 5.0 < float(match[1]) < 30.0
    assert "pred_text" not in results[3] and results[3]["error"].startswith("audio data is truncated or corrupt")
    assert "error" not in results[1]
    # What was read before the damage is transcribed as a file holding only that audio would be.
    for result, seconds, suffix in ((results[0], 18.0, "wav"), (results[2], float(match[1]), "flac")):
        intact_path = tmp_path / f"intact.{suffix}"  # encoded as the damaged file was: the same samples
        sf.write(intact_path, audio[: round(seconds * SAMPLE_RATE)], SAMPLE_RATE, subtype="PCM_16")
        transcribe(model, [{"audio_filepath": str(intact_path)}], tmp_path / "intact.json", 2, chunking=chunking)
        (intact,) = read_manifest(tmp_path / "intact.json")
        assert result["pred_text"] == intact["pred_text"]


# ---------------------------------------------------------------- memory


def _sparse_wav(path: Path, seconds: float, tones_every: float) -> None:
    """A 16-bit mono WAV of ``seconds`` of silence (a sparse file: no disk blocks) with a 1 s tone every
    ``tones_every`` seconds."""
    samples = round(seconds * SAMPLE_RATE)
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + 2 * samples,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        SAMPLE_RATE,
        2 * SAMPLE_RATE,
        2,
        16,
        b"data",
        2 * samples,
    )
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + 2 * samples)
        for start in np.arange(tones_every / 2, seconds - 1, tones_every):
            f.seek(len(header) + 2 * round(start * SAMPLE_RATE))
            f.write(tone)


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def _transcription_peak_mb(model, path: Path, output: Path) -> float:
    """Peak resident memory while transcribing ``path`` above the resident memory before, in MB (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the present size
    before = _status_kb("VmRSS")
    transcribe(model, [{"audio_filepath": str(path)}], output, batch_size=16)
    return (_status_kb("VmHWM") - before) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak memory from /proc")
def test_two_hours_of_silence_and_tones_run_in_flat_memory(tmp_path):
    # A model with 80 ms feature frames (160 ms output frames) keeps two hours of audio quick on a CPU.
    coarse = _untrained(overrides=["model.encoder.C=8", "model.preprocessor.window_stride=0.08"])
    _sparse_wav(tmp_path / "minutes.wav", 300.0, tones_every=60.0)  # enough buffers to fill every batch
    _sparse_wav(tmp_path / "two_hours.wav", 7200.0, tones_every=600.0)
    _transcription_peak_mb(coarse, tmp_path / "minutes.wav", tmp_path / "warm_up.json")  # first-call allocations
    minutes = _transcription_peak_mb(coarse, tmp_path / "minutes.wav", tmp_path / "minutes.json")
    two_hours = _transcription_peak_mb(coarse, tmp_path / "two_hours.wav", tmp_path / "two_hours.json")
    (result,) = read_manifest(tmp_path / "two_hours.json")
    assert "pred_text" in result and "error" not in result
    # Reading two hours at once would take 460 MB for the float samples alone. Chunk by chunk, only the output
    # grows with the input (45,000 frames x 29 classes x 4 bytes = 5 MB, and its copy for decoding).
    assert two_hours - minutes < 100, (minutes, two_hours)


# ---------------------------------------------------------------- options


def test_bad_long_audio_options_are_refused_before_the_model_loads(tmp_path):
    sf.write(tmp_path / "a.wav", _tones(1.0), SAMPLE_RATE)
    base = {"model_path": str(tmp_path / "missing.nemo"), "audio_filepath": str(tmp_path / "a.wav")}
    for updates, message in (
        ({"output_format": "txt"}, "output_format must be one of srt, vtt, ctm, got 'txt'"),
        ({"total_buffer_in_secs": 2.0, "chunk_len_in_secs": 4.0}, "total_buffer_in_secs must be >= chunk_len_in_secs"),
        (
            {"timestamps": True, "ctc_decoding": CTCDecodingConfig(strategy="beam")},
            "timestamps need ctc_decoding.strategy greedy / greedy_batch / pyctcdecode, got 'beam'",
        ),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            run_transcription(TranscriptionConfig(**base, **updates))
    with pytest.raises(FileNotFoundError):  # the options are fine: the model is looked for
        run_transcription(TranscriptionConfig(**base, timestamps=True, output_format="srt"))
