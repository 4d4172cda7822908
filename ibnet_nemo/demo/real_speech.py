"""The real human test set: Asterisk's English prompts (Debian ``asterisk-core-sounds-en-wav``, CC-BY-SA-3.0).

One professional female speaker (Allison) reads digits, numbers, letter names and the phonetic alphabet as
separate 8 kHz telephone prompts. Every clip whose transcript (``core-sounds-en.txt.gz`` of
``asterisk-core-sounds-en``) is made of task words becomes a test utterance, resampled to 16 kHz.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import soundfile as sf
from tqdm.auto import tqdm

from ibnet_nemo.demo.augment import SAMPLE_RATE, resample
from ibnet_nemo.demo.vocabulary import VOCABULARY

__all__ = [
    "ASTERISK_SOUNDS",
    "ASTERISK_SPEAKER",
    "ASTERISK_TRANSCRIPTS",
    "build_real_test_set",
    "read_prompt_transcripts",
]

#: Where Debian installs the prompts (``.wav`` from ``asterisk-core-sounds-en-wav``).
ASTERISK_SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
#: The prompts' transcripts, from ``asterisk-core-sounds-en``.
ASTERISK_TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
#: The ``speaker`` of the real recordings in the manifests: never trained on.
ASTERISK_SPEAKER = "asterisk_allison"
_LINE = re.compile(r"^(?P<name>[^\s:;][^:]*):\s*(?P<text>.+)$")


def read_prompt_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """``{prompt name: transcript}`` from ``core-sounds-en.txt(.gz)``: lines ``digits/7: seven``, ``;`` comments."""
    opener = gzip.open if str(path).endswith(".gz") else open
    transcripts = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            match = _LINE.match(line.strip())
            if match:
                transcripts[match["name"].strip()] = match["text"].strip()
    return transcripts


def _task_text(transcript: str) -> str | None:
    """The transcript in the model's characters if every word is a task word, else None."""
    words = re.sub(r"[.,!?]", " ", transcript.lower()).split()
    return " ".join(words) if words and all(word in VOCABULARY for word in words) else None


def build_real_test_set(
    sounds_dir: str | os.PathLike, transcripts: str | os.PathLike, out_dir: str | os.PathLike
) -> list[dict]:
    """Resample every in-vocabulary prompt to a 16 kHz WAV under ``out_dir``; returns the manifest records.

    Each record also names its speaker (:data:`ASTERISK_SPEAKER`) and its original recording under ``source``.

    Raises:
        FileNotFoundError: ``sounds_dir`` or ``transcripts`` is missing (install the Debian packages named in the
            module docstring), or no prompt matched.
    """
    sounds_dir, out_dir = Path(sounds_dir), Path(out_dir)
    if not sounds_dir.is_dir() or not Path(transcripts).is_file():
        raise FileNotFoundError(
            f"real test speech not found ({sounds_dir}, {transcripts}): "
            "apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-wav"
        )
    chosen = {}
    for name, transcript in read_prompt_transcripts(transcripts).items():
        text = _task_text(transcript)
        if text is not None and (sounds_dir / f"{name}.wav").is_file():
            chosen[name] = text
    if not chosen:
        raise FileNotFoundError(f"no prompt under {sounds_dir} has an in-vocabulary transcript")
    records = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in tqdm(sorted(chosen.items()), desc="Real test set", unit="clip"):
        audio, rate = sf.read(sounds_dir / f"{name}.wav", dtype="float32", always_2d=True)
        audio = resample(audio.mean(axis=1), rate, SAMPLE_RATE)
        path = out_dir / f"{name.replace('/', '_')}.wav"
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        records.append(
            {
                "audio_filepath": str(path),
                "duration": round(audio.size / SAMPLE_RATE, 3),
                "text": text,
                "speaker": ASTERISK_SPEAKER,
                "source": str(sounds_dir / f"{name}.wav"),
            }
        )
    return records
