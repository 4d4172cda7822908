"""Text-to-speech voices of the demo corpus, written as 16 kHz mono WAVs.

Engines: flite, festival and espeak-ng (Debian main); Kokoro-82M and Piper (neural, run in-process, see
:mod:`ibnet_nemo.demo.neural_voices`); RHVoice; MBROLA diphone voices (spoken through espeak-ng); SVOX Pico. Where
each comes from and under which licence: :data:`ibnet_nemo.demo.install.VOICE_SOURCES`.

Each utterance gets its own speaking rate (the engine's duration/speed setting, times the voice's own ``speed``)
and a pitch factor applied by resampling (the audio is read as if recorded at ``rate * pitch`` and resampled to
16 kHz, which shifts pitch and tempo together, the same for every engine).

Every voice has a *speaker*: voices built from recordings of the same person share one (flite ``slt``, festival's
HTS ``slt`` and RHVoice ``slt`` are one speaker), so that a held-out speaker is not trained on under another
engine's name; a Kokoro blend is a speaker of its own.

:func:`synthesize_many` runs a list of (voice, utterance) jobs in worker processes, one per core, with a progress
bar: the neural engines compute in-process (one onnxruntime thread, one model per worker), the others run their
engine's executable.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ibnet_nemo.demo.augment import SAMPLE_RATE, add_noise, resample, telephone_band
from ibnet_nemo.demo.install import KOKORO_VOICES, source_problems, voice_cache
from ibnet_nemo.demo.neural_voices import KOKORO_SAMPLE_RATE, kokoro_blend, kokoro_tts, piper_tts

__all__ = [
    "DEBIAN_TRAIN_VOICES",
    "ENGINES",
    "HELDOUT_VOICES",
    "KOKORO_HELDOUT",
    "KOKORO_TRAIN_VOICES",
    "SINGLE_SPEAKER_TRAIN_VOICES",
    "TRAIN_VOICES",
    "VOICE_CATALOG",
    "Utterance",
    "Voice",
    "available_voices",
    "missing_engines",
    "random_kokoro_blends",
    "synthesize",
    "synthesize_many",
]

#: The engines a :class:`Voice` can name.
ENGINES = ("flite", "festival", "espeak-ng", "kokoro", "rhvoice", "mbrola", "pico", "piper")
# The voices an engine may use, where it offers more than the demo takes (RHVoice's English package also holds two
# voices licensed for non-commercial use without derivatives).
_ENGINE_VOICES = {
    "kokoro": None,  # checked by kokoro_blend
    "rhvoice": ("alan", "bdl", "clb", "slt"),
    "mbrola": ("us1", "us2", "us3", "en1"),
    "pico": ("en-US", "en-GB"),
    "piper": ("joe",),
}
# Voices made from recordings of one person, by speaker (CMU ARCTIC, CMU's Kal, CSTR's ked and Roger).
_PERSONS = {
    "kal": (("flite", "kal"), ("flite", "kal16"), ("festival", "kal_diphone")),
    "slt": (("flite", "slt"), ("festival", "cmu_us_slt_arctic_hts"), ("rhvoice", "slt")),
    "awb": (("flite", "awb"), ("rhvoice", "alan")),
    "rms": (("flite", "rms"),),
    "bdl": (("rhvoice", "bdl"),),
    "clb": (("rhvoice", "clb"),),
    "ked": (("festival", "ked_diphone"),),
    "roger": (("festival", "rab_diphone"), ("mbrola", "en1")),
    "joe": (("piper", "joe"),),
}
_SPEAKERS = {voice: speaker for speaker, voices in _PERSONS.items() for voice in voices}
# Utterances per job: festival and Piper pay their start-up (a Piper session is seeded per job) once per job; the
# others are cut finer for an even load.
_CHUNK = {"festival": 48, "piper": 48}
_DEFAULT_CHUNK = 8


@dataclass(frozen=True)
class Voice:
    """One TTS voice.

    Args:
        engine: one of :data:`ENGINES`.
        name: the engine's voice: flite ``-voice`` name, festival ``voice_<name>`` function, espeak-ng ``-v`` voice
            (``dialect+variant``), Kokoro voice or blend (``af_heart``, ``af_bella55+bm_george45``, see
            :func:`~ibnet_nemo.demo.neural_voices.kokoro_blend`), RHVoice profile, MBROLA voice (``us1``), Pico
            language (``en-US``), Piper voice (``joe``).
        speed: the speaker's own tempo, > 1 faster; every utterance's rate is divided by it. (Default: 1.0)
    """

    engine: str
    name: str
    speed: float = 1.0

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if not self.name:
            raise ValueError("voice name must not be empty")
        if self.engine == "kokoro":
            kokoro_blend(self.name)
        elif _ENGINE_VOICES.get(self.engine) and self.name not in _ENGINE_VOICES[self.engine]:
            raise ValueError(f"{self.engine} voice must be one of {_ENGINE_VOICES[self.engine]}, got {self.name!r}")
        if not 0.5 <= self.speed <= 2.0:
            raise ValueError(f"speed must be in [0.5, 2.0], got {self.speed}")

    @property
    def key(self) -> str:
        """A file-name-safe identifier, e.g. ``espeak-ng_en-us+f2``, ``kokoro_af_bella55+bm_george45_x1.08``."""
        return f"{self.engine}_{self.name}" + ("" if self.speed == 1.0 else f"_x{self.speed:.2f}")

    @property
    def speaker(self) -> str:
        """Who speaks: the person behind a recorded voice (shared across engines), else the engine and voice name
        (a Kokoro blend at any speed is one speaker)."""
        return _SPEAKERS.get((self.engine, self.name), f"{self.engine}_{self.name}")

    @property
    def source(self) -> str:
        """The voice source (a key of :data:`~ibnet_nemo.demo.install.VOICE_SOURCES`) that provides it."""
        return "festival-rab" if (self.engine, self.name) == ("festival", "rab_diphone") else self.engine


@dataclass(frozen=True)
class Utterance:
    """What to synthesize and where.

    Args:
        text: what the voice says (see :func:`ibnet_nemo.demo.vocabulary.spoken_form`).
        path: the 16 kHz WAV to write.
        rate: speaking-rate factor, > 1 is slower (engine duration stretch).
        pitch: pitch-and-tempo factor applied by resampling, > 1 is higher.
        telephone: pass the audio through the telephone band (see :func:`telephone_band`).
        snr_db: add white noise at this signal-to-noise ratio in dB; None adds none.
        seed: seed of the noise.
    """

    text: str
    path: Path
    rate: float = 1.0
    pitch: float = 1.0
    telephone: bool = False
    snr_db: float | None = None
    seed: int = 0

    def __post_init__(self):
        if not 0.5 <= self.rate <= 2.0:
            raise ValueError(f"rate must be in [0.5, 2.0], got {self.rate}")
        if not 0.5 <= self.pitch <= 2.0:
            raise ValueError(f"pitch must be in [0.5, 2.0], got {self.pitch}")


_ESPEAK_TRAIN_DIALECTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029")
_ESPEAK_TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt2", "Alex", "Annie")

#: The voices of each optional voice source (Kokoro: its base voices; :func:`random_kokoro_blends` makes more).
VOICE_CATALOG = {
    "kokoro": tuple(Voice("kokoro", name) for name in KOKORO_VOICES),
    "rhvoice": tuple(Voice("rhvoice", name) for name in _ENGINE_VOICES["rhvoice"]),
    "mbrola": tuple(Voice("mbrola", name) for name in _ENGINE_VOICES["mbrola"]),
    "pico": tuple(Voice("pico", name) for name in _ENGINE_VOICES["pico"]),
    "piper": (Voice("piper", "joe"),),
    "festival-rab": (Voice("festival", "rab_diphone"),),
}


def random_kokoro_blends(
    count: int,
    base_voices: Sequence[str] = KOKORO_VOICES,
    seed: int = 0,
    bases: tuple[int, int] = (2, 3),
    speed_range: tuple[float, float] = (0.85, 1.15),
    min_weight: int = 10,
) -> tuple[Voice, ...]:
    """``count`` Kokoro speakers, each a random blend of base voices, all distinct speakers.

    Each blend takes ``bases[0]..bases[1]`` distinct voices of ``base_voices`` with random percent weights
    (each at least ``min_weight``) and a speed drawn uniformly from ``speed_range`` (two decimals). Voices left out
    of ``base_voices`` take no part in any blend, so they can be held out entirely.

    Args:
        count: how many speakers.
        base_voices: the Kokoro voices blends may use. (Default: all of
            :data:`~ibnet_nemo.demo.install.KOKORO_VOICES`)
        seed: random seed; the same arguments give the same voices. (Default: 0)
        bases: fewest and most base voices per blend. (Default: (2, 3))
        speed_range: the speakers' speed range. (Default: (0.85, 1.15))
        min_weight: smallest weight of a base voice, in percent. (Default: 10)

    Raises:
        ValueError: an argument is out of range, or ``base_voices`` cannot make ``count`` distinct speakers.
    """
    low, high = bases
    unknown = sorted(set(base_voices) - set(KOKORO_VOICES))
    if unknown or len(set(base_voices)) != len(base_voices):
        raise ValueError(f"base_voices must be distinct voices of KOKORO_VOICES, got unknown {unknown}")
    if count < 1 or not 2 <= low <= high <= len(base_voices):
        raise ValueError(f"need count >= 1 and 2 <= bases <= {len(base_voices)} base voices, got {count}, {bases}")
    if not 0.5 <= speed_range[0] <= speed_range[1] <= 2.0:
        raise ValueError(f"speed_range must lie in [0.5, 2.0], got {speed_range}")
    if not 1 <= min_weight * high <= 100:
        raise ValueError(f"min_weight * {high} bases must be in [1, 100], got min_weight={min_weight}")
    rng = np.random.default_rng(seed)
    voices: dict[str, Voice] = {}
    for _ in range(100 * count):
        size = int(rng.integers(low, high + 1))
        chosen = [base_voices[i] for i in rng.choice(len(base_voices), size=size, replace=False)]
        spare = 100 - min_weight * size
        weights = [min_weight + int(share) for share in np.floor(rng.dirichlet(np.ones(size)) * spare)]
        weights[int(np.argmax(weights))] += 100 - sum(weights)
        parts = sorted(zip(weights, chosen), key=lambda part: (-part[0], part[1]))
        name = "+".join(f"{voice}{weight}" for weight, voice in parts)
        if name not in voices:
            voices[name] = Voice("kokoro", name, speed=round(float(rng.uniform(*speed_range)), 2))
            if len(voices) == count:
                return tuple(voices.values())
    raise ValueError(f"could not draw {count} distinct blends from {len(base_voices)} base voices")


#: Debian main's voices the demo trains on: flite and festival speakers, espeak-ng dialects x variants.
DEBIAN_TRAIN_VOICES = (
    *(Voice("flite", name) for name in ("kal", "kal16", "awb", "slt")),
    *(Voice("festival", name) for name in ("kal_diphone", "cmu_us_slt_arctic_hts")),
    *(Voice("espeak-ng", f"{d}+{v}") for d in _ESPEAK_TRAIN_DIALECTS for v in _ESPEAK_TRAIN_VARIANTS),
)
#: Kokoro base voices never trained on, alone or inside a blend: one US and one UK voice of each sex.
KOKORO_HELDOUT = ("af_heart", "am_michael", "bf_emma", "bm_george")
#: Kokoro training speakers: random blends of the English base voices that are not held out.
KOKORO_TRAIN_VOICES = random_kokoro_blends(1000, tuple(v for v in KOKORO_VOICES if v not in KOKORO_HELDOUT))
#: The optional sources' voices of one recorded person each: RHVoice, MBROLA, SVOX Pico, Piper joe, festival rab.
SINGLE_SPEAKER_TRAIN_VOICES = tuple(
    voice for name, voices in VOICE_CATALOG.items() if name != "kokoro" for voice in voices
)
#: Voices the demo trains on.
TRAIN_VOICES = DEBIAN_TRAIN_VOICES + SINGLE_SPEAKER_TRAIN_VOICES + KOKORO_TRAIN_VOICES
#: Voices never seen in training: the synthetic test set (an unseen flite and festival speaker, an unseen
#: espeak-ng dialect with unseen variants, and the held-out Kokoro voices).
HELDOUT_VOICES = (
    Voice("flite", "rms"),
    Voice("festival", "ked_diphone"),
    *(Voice("espeak-ng", f"en-us-nyc+{v}") for v in ("m6", "f4", "klatt3")),
    *(Voice("kokoro", name) for name in KOKORO_HELDOUT),
)


def missing_engines() -> list[str]:
    """Executables of the Debian-main engines (flite, festival, espeak-ng) that are not on ``PATH``."""
    return [exe for exe in ("flite", "festival", "espeak-ng") if shutil.which(exe) is None]


def available_voices(voices: Sequence[Voice]) -> tuple[Voice, ...]:
    """The ``voices`` whose voice source is ready here, in order; prints which voices it leaves out, and why
    (``python -m ibnet_nemo.demo --install-only`` installs what can be installed)."""
    cache = voice_cache()
    problems = {source: source_problems(source, cache) for source in dict.fromkeys(v.source for v in voices)}
    for source, missing in problems.items():
        if missing:
            left_out = [voice.key for voice in voices if voice.source == source]
            print(
                f"Leaving out {len(left_out)} {source} voice(s) ({', '.join(left_out[:4])}"
                f"{', ...' if len(left_out) > 4 else ''}): missing {', '.join(missing)}"
            )
    return tuple(voice for voice in voices if not problems[voice.source])


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _run(command: list[str], **kwargs) -> None:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def _engine_command(voice: Voice, text: str, rate: float, path: Path) -> tuple[list[str], str | None]:
    """The command line that writes ``text`` to the WAV ``path`` at speaking-rate factor ``rate``, and its stdin."""
    words_per_minute, percent = str(round(175 / rate)), str(round(100 / rate))
    if voice.engine == "flite":
        stretch = f"duration_stretch={rate:.3f}"
        return ["flite", "-voice", voice.name, "--setf", stretch, "-t", text, "-o", str(path)], None
    if voice.engine in ("espeak-ng", "mbrola"):
        name = f"mb-{voice.name}" if voice.engine == "mbrola" else voice.name
        return ["espeak-ng", "-v", name, "-s", words_per_minute, "-w", str(path), text], None
    if voice.engine == "rhvoice":
        return ["RHVoice-test", "-p", voice.name, "-r", percent, "-o", str(path)], text
    if voice.engine == "pico":
        return ["pico2wave", "-l", voice.name, "-w", str(path), f'<speed level="{percent}">{text}</speed>'], None
    raise ValueError(f"{voice.engine} runs no executable per utterance")


def _engine_audio(voice: Voice, utterances: Sequence[Utterance], raw_dir: Path) -> list[tuple[np.ndarray, int]]:
    """Each utterance as the engine makes it: (mono float32 audio, its sample rate). The neural engines compute in
    this process; festival runs once for all utterances (its start-up is slow); the others once per utterance."""
    rates = [utterance.rate / voice.speed for utterance in utterances]
    if voice.engine == "kokoro":
        kokoro = kokoro_tts(voice_cache())
        return [(kokoro(u.text, voice.name, 1.0 / rate), KOKORO_SAMPLE_RATE) for u, rate in zip(utterances, rates)]
    if voice.engine == "piper":
        piper = piper_tts(voice_cache(), seed=utterances[0].seed)
        return [(piper(u.text, rate=rate), piper.sample_rate) for u, rate in zip(utterances, rates)]
    raw = [raw_dir / f"{index}.wav" for index in range(len(utterances))]
    if voice.engine == "festival":
        lines = [f"(voice_{voice.name})"]
        for utterance, rate, path in zip(utterances, rates, raw):
            lines.append(f"(Parameter.set 'Duration_Stretch {rate:.3f})")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{_escape(utterance.text)}")) "{path}" \'riff)')
        script = raw_dir / "batch.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _run(["festival", "--batch", str(script)])
    else:
        for utterance, rate, path in zip(utterances, rates, raw):
            command, stdin = _engine_command(voice, utterance.text, rate, path)
            _run(command, input=stdin)
    audio = []
    for path in raw:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        audio.append((samples.mean(axis=1), rate))
    return audio


def synthesize(voice: Voice, utterances: Sequence[Utterance]) -> list[float]:
    """Synthesize ``utterances`` with ``voice`` into 16 kHz mono WAVs; returns their durations in seconds.

    Leading and trailing silence is kept as the engine makes it; the peak is normalized to 0.9 after the
    optional telephone band and noise.

    Raises:
        RuntimeError: the engine failed or wrote no audio (the message carries its stderr).
    """
    durations = []
    with tempfile.TemporaryDirectory(prefix="ibnet_demo_tts_") as tmp:
        for utterance, (audio, rate) in zip(utterances, _engine_audio(voice, utterances, Path(tmp))):
            audio = resample(audio, rate * utterance.pitch, SAMPLE_RATE)
            if utterance.telephone:
                audio = telephone_band(audio, SAMPLE_RATE)
            if utterance.snr_db is not None:
                audio = add_noise(audio, utterance.snr_db, np.random.default_rng(utterance.seed))
            peak = float(np.abs(audio).max()) if audio.size else 0.0
            if peak == 0.0:
                raise RuntimeError(f"{voice.key} wrote silence for {utterance.text!r}")
            utterance.path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(utterance.path, 0.9 * audio / peak, SAMPLE_RATE, subtype="PCM_16")
            durations.append(audio.size / SAMPLE_RATE)
    return durations


def synthesize_many(
    jobs: Sequence[tuple[Voice, Utterance]], workers: int | None = None, description: str = "Synthesizing"
) -> list[float]:
    """Synthesize every (voice, utterance) job in ``workers`` processes, with a progress bar; returns the
    durations in job order.

    Jobs are grouped by voice into chunks (festival's and Piper's of 48 utterances, the others' of 8), which the
    workers take as they finish; a worker loads Kokoro once, on its first Kokoro chunk, and a seeded Piper session
    per Piper chunk, so that every chunk's audio depends on its jobs alone. The workers are forked,
    so they start at once with this process's imports; one worker runs the chunks in this process.

    Args:
        jobs: what to synthesize.
        workers: processes. (Default: the number of CPUs)
        description: the progress bar's label. (Default: ``Synthesizing``)

    Raises:
        RuntimeError: an engine failed (the first failure; the chunks not yet started are cancelled).
    """
    by_voice: dict[Voice, list[int]] = {}
    for index, (voice, _) in enumerate(jobs):
        by_voice.setdefault(voice, []).append(index)
    chunks = [
        indices[start : start + _CHUNK.get(voice.engine, _DEFAULT_CHUNK)]
        for voice, indices in by_voice.items()
        for start in range(0, len(indices), _CHUNK.get(voice.engine, _DEFAULT_CHUNK))
    ]
    workers = min(workers or os.cpu_count() or 1, max(1, len(chunks)))
    pool = None
    if workers == 1:
        results = ((chunk, synthesize(jobs[chunk[0]][0], [jobs[i][1] for i in chunk])) for chunk in chunks)
    else:
        # The first submit forks every worker: before the progress bar starts its monitor thread.
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        futures = {pool.submit(synthesize, jobs[chunk[0]][0], [jobs[i][1] for i in chunk]): chunk for chunk in chunks}
        results = ((futures[future], future.result()) for future in as_completed(futures))
    durations: dict[int, float] = {}
    try:
        with tqdm(total=len(jobs), desc=description, unit="utt") as bar:
            for chunk, chunk_durations in results:
                durations.update(zip(chunk, chunk_durations))
                bar.update(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return [durations[index] for index in range(len(jobs))]
