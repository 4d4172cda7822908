"""Reading audio for a CTC model: any file libsndfile reads, as mono float32 at the model's sample rate.

A file that cannot be used raises :class:`AudioError` with a one-line reason (missing, empty, not audio,
truncated, no samples, non-finite samples), which transcription writes to the input's record.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

__all__ = ["AudioError", "load_audio"]

# RIFF declares an unknown data length (a stream written before its end was known) with one of these.
_UNKNOWN_RIFF_SIZES = (0, 0xFFFFFFFF)


class AudioError(ValueError):
    """An input that cannot be transcribed; ``str(error)`` is the one-line reason written to its record."""


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 samples at ``sample_rate``.

    Channels are averaged; other sample rates are resampled (soxr, via librosa).

    Returns:
        Samples, shape ``(T,)``.

    Raises:
        AudioError: the file is missing, empty, not audio, truncated or corrupt, holds no samples, or holds
            NaN/Inf samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError("file not found")
    if not path.is_file():
        raise AudioError("not a regular file")
    if path.stat().st_size == 0:
        raise AudioError("file is empty (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            if f.format == "WAV":
                _check_wav_length(path)
            file_rate = f.samplerate
            try:
                audio = f.read(dtype="float32", always_2d=True)
            except sf.LibsndfileError as error:
                raise AudioError(f"audio data is truncated or corrupt ({error.error_string})") from None
    except sf.LibsndfileError as error:
        raise AudioError(f"not an audio file libsndfile can read ({error.error_string})") from None
    if audio.shape[0] == 0:
        raise AudioError("no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError("non-finite samples (NaN or Inf)")
    audio = audio.mean(axis=1)
    if file_rate != sample_rate:
        audio = librosa.resample(audio, orig_sr=file_rate, target_sr=sample_rate).astype(np.float32)
    return audio


def _check_wav_length(path: Path) -> None:
    """Raise :class:`AudioError` when a RIFF/WAVE file holds fewer data bytes than its header declares.

    libsndfile reads a truncated WAV without complaint (it shortens the length to what is there), so the data
    chunk's declared size is compared with the bytes that follow it.
    """
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        file_size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            chunk_id, declared = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                present = file_size - f.tell()
                if declared > present and declared not in _UNKNOWN_RIFF_SIZES:
                    raise AudioError(f"truncated: the header declares {declared} data bytes, the file holds {present}")
                return
            f.seek(declared + declared % 2, os.SEEK_CUR)
