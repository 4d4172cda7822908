"""`make demo` in miniature: the corpus builders, the signal augmentation, the report, and the whole pipeline
(three voices, a few utterances, a few training steps of both models side by side as ``--compare`` runs them, both
decodings, plot, one transcription).

Needs the demo's Debian TTS packages (`python -m ibnet_nemo.demo --install-only` installs them). The real test
speech is a generated stand-in for the Asterisk prompt tree, so the test reads no Debian audio.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import compose

import ibnet_nemo.demo.pipeline as pipeline
from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.demo.augment import SAMPLE_RATE, add_noise, telephone_band
from ibnet_nemo.demo.corpus import SPLITS, TEST_SPLITS, CorpusSpec, _plan_split, build_corpus, corpus_summary
from ibnet_nemo.demo.install import missing_apt_packages
from ibnet_nemo.demo.neural_voices import kokoro_blend
from ibnet_nemo.demo.pipeline import _hydra_overrides, _precision_overrides, run_demo
from ibnet_nemo.demo.real_speech import ASTERISK_SPEAKER, build_real_test_set, read_prompt_transcripts
from ibnet_nemo.demo.report import Result, format_table
from ibnet_nemo.demo.settings import DECODINGS, DEMO_MODELS, DemoModel, DemoSettings
from ibnet_nemo.demo.synthesis import ENGINES, HELDOUT_VOICES, KOKORO_HELDOUT, TRAIN_VOICES, Voice, missing_engines
from ibnet_nemo.demo.vocabulary import VOCABULARY, random_transcript, spoken_form, task_sentences

# A stand-in for core-sounds-en.txt.gz: in-vocabulary prompts, a dotted one, out-of-vocabulary ones, a comment.
FAKE_PROMPTS = {
    "digits/7": "seven",
    "digits/a-m": "A.M.",
    "letters/b": "b",
    "phonetic/x_p": "xray",
    "digits/million": "million",
    "agent-pass": "Please enter your password followed by the pound key.",
}
IN_VOCABULARY = {"digits/7": "seven", "digits/a-m": "a m", "letters/b": "b", "phonetic/x_p": "xray"}


def make_prompt_tree(root: Path) -> tuple[Path, Path]:
    """8 kHz WAVs for every prompt but one in-vocabulary prompt left without audio, and the gzipped transcripts."""
    sounds = root / "sounds"
    rng = np.random.default_rng(0)
    for name in FAKE_PROMPTS:
        if name != "letters/b":
            (sounds / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(sounds / f"{name}.wav", 0.1 * rng.standard_normal(4000).astype(np.float32), 8000)
    transcripts = root / "core-sounds-en.txt.gz"
    lines = ["; Core Asterisk Sounds in English", ""] + [f"{name}: {text}" for name, text in FAKE_PROMPTS.items()]
    with gzip.open(transcripts, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return sounds, transcripts


def band_energy(audio: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / SAMPLE_RATE)
    return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum())


def test_vocabulary_and_spoken_form():
    assert len(VOCABULARY) == len(set(VOCABULARY)) == 11 + 20 + 26 + 26
    assert all(set(word) <= set("abcdefghijklmnopqrstuvwxyz") for word in VOCABULARY)
    assert spoken_form("b seven xray a") == "B seven x-ray eigh"
    with pytest.raises(ValueError, match="million"):
        spoken_form("seven million")
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    texts = [random_transcript(rng_a, max_tokens=4) for _ in range(200)]
    assert texts == [random_transcript(rng_b, max_tokens=4) for _ in range(200)]
    assert {len(text.split()) for text in texts} == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="max_tokens=0"):
        random_transcript(rng_a, min_tokens=1, max_tokens=0)
    assert task_sentences(["one two"])[:2] == ["one two", "zero"] and len(task_sentences([])) == len(VOCABULARY)


def test_voice_catalog_holds_speakers_out_entirely():
    train_speakers = {voice.speaker for voice in TRAIN_VOICES}
    assert len(train_speakers) >= 1000 and not train_speakers & {voice.speaker for voice in HELDOUT_VOICES}
    assert {voice.engine for voice in HELDOUT_VOICES} == {"flite", "festival", "espeak-ng", "kokoro"}
    # The held-out Kokoro voices: one US and one UK voice of each sex, in no training blend.
    assert sorted(name[:2] for name in KOKORO_HELDOUT) == ["af", "am", "bf", "bm"]
    blended = {base for voice in TRAIN_VOICES if voice.engine == "kokoro" for base, _ in kokoro_blend(voice.name)}
    assert len(blended) == 24 and not blended & set(KOKORO_HELDOUT)
    assert {voice.engine for voice in TRAIN_VOICES} == set(ENGINES)
    with pytest.raises(ValueError, match="'sapi'"):
        Voice("sapi", "david")
    with pytest.raises(ValueError, match="both trained on and held out"):
        CorpusSpec(heldout_voices=TRAIN_VOICES[:1])
    with pytest.raises(ValueError, match=r"speed_copies must be > 0 and not 1, got \(0.9, 1.0\)"):
        CorpusSpec(speed_copies=(0.9, 1.0))


def test_single_token_fraction_shapes_the_training_texts_only(tmp_path):
    voices = (Voice("flite", "kal16"),)

    def token_counts(fraction: float, split: str) -> np.ndarray:
        spec = CorpusSpec(train_voices=voices, heldout_voices=(Voice("flite", "slt"),), single_token_fraction=fraction)
        plan = _plan_split(spec, split, 2000, voices, split != "test_synthetic_heldout", tmp_path, seed=5)
        return np.array([len(transcript.split()) for _, _, transcript in plan])

    assert (token_counts(1.0, "train") == 1).all()
    # The rest draw 1..7 tokens uniformly: 0.5 + 0.5 / 7 of the utterances are single tokens.
    assert (token_counts(0.5, "train") == 1).mean() == pytest.approx(0.5 + 0.5 / 7, abs=0.03)
    assert (token_counts(0.0, "train") == 1).mean() == pytest.approx(1 / 7, abs=0.03)
    for split in ("val", "test_synthetic_heldout"):
        assert (token_counts(1.0, split) == 1).mean() == pytest.approx(1 / 7, abs=0.03)
    with pytest.raises(ValueError, match=r"single_token_fraction must be in \[0, 1\], got 1.5"):
        CorpusSpec(single_token_fraction=1.5)


def test_telephone_band_and_noise():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(SAMPLE_RATE).astype(np.float32)
    narrow = telephone_band(audio, SAMPLE_RATE)
    assert narrow.shape == audio.shape
    # Nothing above the 4 kHz Nyquist frequency of the 8 kHz channel, nothing much below the 300 Hz high-pass.
    assert band_energy(narrow, 4500, 8000) < 1e-3 * band_energy(narrow, 500, 3500)
    assert band_energy(narrow, 0, 100) < 1e-2 * band_energy(audio, 0, 100)
    noisy = add_noise(audio, snr_db=20.0, rng=rng)
    snr = 10 * np.log10(np.mean(audio**2) / np.mean((noisy - audio) ** 2))
    assert abs(snr - 20.0) < 0.3


def test_real_test_set_keeps_in_vocabulary_prompts(tmp_path):
    sounds, transcripts = make_prompt_tree(tmp_path)
    assert read_prompt_transcripts(transcripts) == FAKE_PROMPTS
    records = build_real_test_set(sounds, transcripts, tmp_path / "out")
    # letters/b is in the vocabulary but has no recording; the others are out of the vocabulary.
    assert {Path(r["source"]).relative_to(sounds).with_suffix("").as_posix(): r["text"] for r in records} == {
        name: text for name, text in IN_VOCABULARY.items() if name != "letters/b"
    }
    for record in records:
        info = sf.info(record["audio_filepath"])
        assert info.samplerate == SAMPLE_RATE and abs(info.duration - 0.5) < 0.01
        assert record["speaker"] == ASTERISK_SPEAKER
    with pytest.raises(FileNotFoundError, match="asterisk-core-sounds-en-wav"):
        build_real_test_set(tmp_path / "missing", transcripts, tmp_path / "out")


def test_missing_apt_packages_are_reported():
    assert missing_apt_packages(("dpkg", "no-such-package-ibnet-demo")) == ["no-such-package-ibnet-demo"]


def test_result_records_and_table():
    with pytest.raises(ValueError, match="'conformer'"):
        Result("conformer", 1, 1.0, 1.0, 1, "real_human", "greedy", 5.0, 3)
    results = [
        Result("ibnet", 674077, 7.5, 6.0, 1000, test_set, decoding, wer, 10)
        for (test_set, decoding), wer in zip(
            [("synthetic_heldout", "greedy"), ("synthetic_heldout", "lm"), ("real_human", "greedy")], [5.0, 4.0, 12.5]
        )
    ]
    table = format_table(results).splitlines()
    assert [cell.strip() for cell in table[0].split(" | ")][:4] == ["model", "params", "train min (CPU)", "steps"]
    assert [cell.strip() for cell in table[2].split(" | ")] == [
        "ibnet",
        "674k",
        "7.5 (6.0)",
        "1000",
        "5.0% (10)",
        "4.0% (10)",
        "12.5% (10)",
        "-",
    ]


def test_the_lm_command_the_demo_prints_decodes_as_the_demo_did(tmp_path):
    # The command shown to the user after the run carries the demo's own beam and LM weights.
    settings, lm = DemoSettings(), tmp_path / "task_3gram.arpa"
    (lm_decoding,) = [d for d in DECODINGS if d.beam_lm]
    assert _hydra_overrides("ctc_decoding", settings.decoding_config(lm_decoding, lm)) == [
        "ctc_decoding.strategy=pyctcdecode",
        "ctc_decoding.beam.beam_size=32",
        f"ctc_decoding.beam.ngram_lm_model={lm}",
        "ctc_decoding.beam.ngram_lm_alpha=0.2",
        "ctc_decoding.beam.beam_beta=1.0",
    ]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_training_falls_back_to_fp32_where_bf16_would_be_emulated(native_bf16, monkeypatch):
    # The demo configs train in bf16 autocast; a CPU without native bf16 trains in fp32 instead, unless told.
    assert compose("demo_ibnet").trainer.precision == compose("demo_quartznet").trainer.precision == "bf16-mixed"
    monkeypatch.setattr(pipeline, "cpu_has_native_bf16", lambda: native_bf16)
    assert _precision_overrides(["trainer.max_steps=10"]) == ([] if native_bf16 else ["trainer.precision=32"])
    assert _precision_overrides(["trainer.precision=bf16-mixed"]) == []


def test_settings_refuse_what_would_fail_after_training(tmp_path):
    """A model name the results cannot hold, or an LM order the LM builder refuses, fails when the settings are
    made, before a corpus is built or a model trained; every name the settings accept, a result accepts."""
    with pytest.raises(ValueError, match=r"name 'conformer' is not one of the demo's models \('ibnet', 'quartznet'\)"):
        DemoSettings(output_dir=tmp_path, models=(DemoModel("conformer", "demo_ibnet", 6e-3),))
    with pytest.raises(ValueError, match="lm_order must be >= 2, got 1"):
        DemoSettings(output_dir=tmp_path, lm_order=1)
    with pytest.raises(ValueError, match="model names must be unique"):
        DemoSettings(output_dir=tmp_path, models=DEMO_MODELS[:1] * 2)
    for model in DEMO_MODELS:
        assert DemoSettings(models=(model,)).models == (model,)
        for test_set in TEST_SPLITS:
            for decoding in DECODINGS:
                assert Result(model.name, 1, 1.0, 1.0, 1, test_set, decoding.name, 5.0, 3).model == model.name


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The whole demo on a miniature corpus with a few training steps; returns (output dir, results, seconds)."""
    if missing_engines():
        pytest.fail(f"TTS engines missing: {missing_engines()}; run `python -m ibnet_nemo.demo --install-only`")
    root = tmp_path_factory.mktemp("demo")
    sounds, transcripts = make_prompt_tree(root / "prompts")
    corpus = CorpusSpec(
        train_utterances=24,
        val_utterances=6,
        test_utterances=6,
        train_voices=(Voice("flite", "kal16"), Voice("festival", "kal_diphone"), Voice("espeak-ng", "en-us+m1")),
        heldout_voices=(Voice("flite", "slt"),),
        max_tokens=3,
        real_sounds_dir=str(sounds),
        real_transcripts=str(transcripts),
    )
    overrides = (
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "model.train_ds.batch_size=6",
        "model.optim.sched.warmup_steps=2",
        "trainer.log_every_n_steps=1",
    )
    settings = DemoSettings(
        output_dir=root / "out", corpus=corpus, models=DEMO_MODELS, train_overrides=overrides, beam_size=4
    )
    start = time.time()
    results = run_demo(settings)
    return root / "out", corpus, results, time.time() - start


def test_demo_corpus_is_built_split_by_voice_and_cached(demo_run, capsys):
    out, corpus, _, _ = demo_run
    manifests = {split: out / "corpus" / f"{split}.json" for split in SPLITS}
    records = {split: list(read_manifest(path)) for split, path in manifests.items()}
    # The training utterances, then each of them at every speed of corpus.speed_copies (0.9 and 1.1).
    assert [len(records[split]) for split in SPLITS] == [24 * 3, 6, 6, 3]
    originals = records["train"][:24]
    assert not any("speed" in r for r in originals)
    for index, factor in enumerate(corpus.speed_copies, start=1):
        copies = records["train"][24 * index : 24 * (index + 1)]
        assert [c["speed"] for c in copies] == [factor] * 24
        for original, copy in zip(originals, copies):
            assert (copy["text"], copy["speaker"]) == (original["text"], original["speaker"])
            assert copy["duration"] == pytest.approx(factor * original["duration"], abs=2e-3)
    train_voices = {voice.key for voice in corpus.train_voices}
    assert {r["voice"] for r in records["train"] + records["val"]} <= train_voices
    assert {r["voice"] for r in records["test_synthetic_heldout"]} == {"flite_slt"}
    assert {r["voice"].split("_")[0] for r in records["train"]} == {"flite", "festival", "espeak-ng"}
    # Every line names its speaker: no test speaker is trained on, the real recordings' speaker only in their set.
    speakers = {split: {r["speaker"] for r in records[split]} for split in SPLITS}
    assert speakers["train"] == {"kal", "espeak-ng_en-us+m1"} and speakers["val"] <= speakers["train"]  # kal twice
    assert not speakers["train"] & (speakers["test_synthetic_heldout"] | speakers["test_real_human"])
    assert speakers["test_real_human"] == {ASTERISK_SPEAKER}
    assert ASTERISK_SPEAKER not in speakers["train"] | speakers["val"] | speakers["test_synthetic_heldout"]
    for record in records["train"][:5] + records["test_synthetic_heldout"][:2]:
        info = sf.info(record["audio_filepath"])
        assert info.samplerate == SAMPLE_RATE and abs(info.duration - record["duration"]) < 2e-3
        assert set(record["text"].split()) <= set(VOCABULARY)
    # A second build of the same spec reuses every file.
    stamp = {path: path.stat().st_mtime_ns for path in (out / "corpus" / "audio").rglob("*.wav")}
    capsys.readouterr()
    assert build_corpus(out / "corpus", corpus) == manifests
    assert "reusing" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in stamp} == stamp


def test_demo_results_plot_models_and_transcription(demo_run):
    out, corpus, results, seconds = demo_run
    document = json.loads((out / "results.json").read_text())
    manifests = {split: out / "corpus" / f"{split}.json" for split in SPLITS}
    assert {key: document[key] for key in ("train_speakers", "hours")} == corpus_summary(manifests)
    assert document["train_speakers"] == 2 and set(document["hours"]["train"]) == {"flite", "festival", "espeak-ng"}
    train_hours = sum(r["duration"] for r in read_manifest(manifests["train"])) / 3600
    assert abs(sum(document["hours"]["train"].values()) - train_hours) < 0.01
    assert set(document["hours"]["test_real_human"]) == {"asterisk"}
    records = document["results"]
    assert len(records) == 8 and records == [result.__dict__ for result in results]
    assert {(r["model"], r["test_set"], r["decoding"]) for r in records} == {
        (m, t, d) for m in ("ibnet", "quartznet") for t in ("synthetic_heldout", "real_human") for d in ("greedy", "lm")
    }
    for record in records:
        assert record["utterances"] == (6 if record["test_set"] == "synthetic_heldout" else 3)
        assert record["wer"] >= 0 and record["train_steps"] == 4 and 0 < record["train_minutes"] < seconds / 60
        assert 0 < record["train_cpu_minutes"] < 2 * record["train_minutes"]
    params = {r["model"]: r["params"] for r in records}
    assert params["ibnet"] == 653597 and abs(params["quartznet"] / params["ibnet"] - 1) < 0.05
    assert (out / "validation_wer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ("ibnet", "quartznet"):
        assert (out / f"{model}.nemo").stat().st_size > 1e6
        log = (out / f"{model}_train.log").read_text(errors="replace")
        assert "Epoch 0" in log and "max_steps=4" in log
    for name in ("ibnet_real_human_greedy", "quartznet_synthetic_heldout_lm"):
        assert all("pred_text" in r for r in read_manifest(out / "transcripts" / f"{name}.json"))
    clip = next(read_manifest(out / "one_clip.json"))
    assert "pred_text" in clip and Path(clip["audio_filepath"]).suffix == ".wav"
