"""Text-to-speech with the English voices in Debian main (flite, festival, espeak-ng), written as 16 kHz WAVs.

Each utterance gets its own speaking rate (the engine's duration/speed setting) and a pitch factor applied by
resampling (the audio is read as if recorded at ``rate * pitch`` and resampled to 16 kHz, which shifts pitch and
tempo together, the same for every engine).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ibnet_nemo.demo.augment import SAMPLE_RATE, add_noise, resample, telephone_band

__all__ = [
    "ENGINES",
    "TRAIN_VOICES",
    "HELDOUT_VOICES",
    "Voice",
    "Utterance",
    "missing_engines",
    "synthesize",
]

#: Engine name -> the executable it runs.
ENGINES = {"flite": "flite", "festival": "festival", "espeak-ng": "espeak-ng"}


@dataclass(frozen=True)
class Voice:
    """One TTS voice.

    Args:
        engine: a key of :data:`ENGINES`.
        name: the engine's voice name: flite ``-voice`` name, festival ``voice_<name>`` function, espeak-ng
            ``-v`` voice (``dialect+variant``).
    """

    engine: str
    name: str

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {self.engine!r}")
        if not self.name:
            raise ValueError("voice name must not be empty")

    @property
    def key(self) -> str:
        """A file-name-safe identifier, e.g. ``espeak-ng_en-us+f2``."""
        return f"{self.engine}_{self.name}"


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

#: Voices the demo trains on.
TRAIN_VOICES = (
    *(Voice("flite", name) for name in ("kal", "kal16", "awb", "slt")),
    *(Voice("festival", name) for name in ("kal_diphone", "cmu_us_slt_arctic_hts")),
    *(Voice("espeak-ng", f"{d}+{v}") for d in _ESPEAK_TRAIN_DIALECTS for v in _ESPEAK_TRAIN_VARIANTS),
)
#: Voices never seen in training: the synthetic test set (an unseen flite and festival speaker, and an unseen
#: espeak-ng dialect with unseen variants).
HELDOUT_VOICES = (
    Voice("flite", "rms"),
    Voice("festival", "ked_diphone"),
    *(Voice("espeak-ng", f"en-us-nyc+{v}") for v in ("m6", "f4", "klatt3")),
)


def missing_engines() -> list[str]:
    """Executables of :data:`ENGINES` that are not on ``PATH``."""
    return [exe for exe in ENGINES.values() if shutil.which(exe) is None]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _run(command: list[str], **kwargs) -> None:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def _synthesize_raw(voice: Voice, utterances: list[Utterance], raw_dir: Path) -> list[Path]:
    """Run the engine once per utterance (flite, espeak-ng) or once for all (festival: its start-up is slow)."""
    raw = [raw_dir / f"{index}.wav" for index in range(len(utterances))]
    if voice.engine == "flite":
        for utterance, path in zip(utterances, raw):
            _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={utterance.rate:.3f}",
                  "-t", utterance.text, "-o", str(path)])  # fmt: skip
    elif voice.engine == "espeak-ng":
        for utterance, path in zip(utterances, raw):
            words_per_minute = round(175 / utterance.rate)
            _run(["espeak-ng", "-v", voice.name, "-s", str(words_per_minute), "-w", str(path), utterance.text])
    else:
        lines = [f"(voice_{voice.name})"]
        for utterance, path in zip(utterances, raw):
            lines.append(f"(Parameter.set 'Duration_Stretch {utterance.rate:.3f})")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{_escape(utterance.text)}")) "{path}" \'riff)')
        script = raw_dir / "batch.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _run(["festival", "--batch", str(script)])
    return raw


def synthesize(voice: Voice, utterances: list[Utterance]) -> list[float]:
    """Synthesize ``utterances`` with ``voice`` into 16 kHz mono WAVs; returns their durations in seconds.

    Leading and trailing silence is kept as the engine makes it; the peak is normalized to 0.9 after the
    optional telephone band and noise.

    Raises:
        RuntimeError: the engine failed or wrote no audio (the message carries its stderr).
    """
    durations = []
    with tempfile.TemporaryDirectory(prefix="ibnet_demo_tts_") as tmp:
        for utterance, raw_path in zip(utterances, _synthesize_raw(voice, utterances, Path(tmp))):
            audio, rate = sf.read(raw_path, dtype="float32", always_2d=True)
            audio = resample(audio.mean(axis=1), rate * utterance.pitch, SAMPLE_RATE)
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
