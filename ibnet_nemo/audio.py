"""Reading audio for a CTC model: any file libsndfile reads, as mono float32 at the model's sample rate.

:class:`AudioReader` reads a file block by block (channels averaged, resampled on the fly with soxr), so that a
recording of hours is never held whole; :func:`load_audio` reads a short file at once through it. A file that
cannot be used raises :class:`AudioError` with a one-line reason (missing, empty, not audio, truncated, corrupt, no
samples, non-finite samples; where the damage lies part-way, the seconds read before it), which transcription
writes to the input's record.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import soundfile as sf
import soxr

__all__ = ["AudioError", "AudioReader", "load_audio"]

#: Seconds of the file read per block; also the resolution at which damage part-way through a file is located.
BLOCK_SECONDS = 1.0
# RIFF declares an unknown data length (a stream written before its end was known) with one of these.
_UNKNOWN_RIFF_SIZES = (0, 0xFFFFFFFF)


class AudioError(ValueError):
    """An input that cannot be transcribed; ``str(error)`` is the one-line reason written to its record."""


class AudioReader:
    """An audio file read in blocks as mono float32 samples at ``sample_rate``.

    Opening checks what can be checked without reading the samples (the file exists, is not empty, is audio);
    :meth:`blocks` reads the samples. Channels are averaged; another sample rate is resampled with soxr's
    streaming resampler, whose output is the same as resampling the whole file at once (librosa's default).
    Use it as a context manager, or call :meth:`close`.

    Args:
        path: the audio file.
        sample_rate: the sample rate to deliver, in Hz.

    Raises:
        AudioError: the file is missing, not a regular file, empty, or not audio libsndfile can read.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int):
        path = Path(path)
        if not path.exists():
            raise AudioError("file not found")
        if not path.is_file():
            raise AudioError("not a regular file")
        if path.stat().st_size == 0:
            raise AudioError("file is empty (0 bytes)")
        try:
            self._file = sf.SoundFile(path)
        except sf.LibsndfileError as error:
            raise AudioError(f"not an audio file libsndfile can read ({error.error_string})") from None
        self.sample_rate = sample_rate
        self._truncation = _wav_truncation(path) if self._file.format == "WAV" else None

    @property
    def duration(self) -> float:
        """Seconds of audio the file holds (of a truncated WAV: what is there, not what its header declares)."""
        return self._file.frames / self._file.samplerate

    def blocks(self) -> Iterator[np.ndarray]:
        """The samples in order, in blocks of about :data:`BLOCK_SECONDS`, each ``(T_block,)`` float32.

        Raises:
            AudioError: when the samples end early (a WAV shorter than its header declares), cannot be decoded
                (truncated or corrupt compressed data) or are not finite. Every block before the damage has been
                yielded by then, and the message says after how many seconds of audio the damage lies.
        """
        file_rate = self._file.samplerate
        resampler = (
            None
            if file_rate == self.sample_rate
            else soxr.ResampleStream(file_rate, self.sample_rate, 1, dtype="float32", quality="HQ")
        )
        block_frames = max(1, round(BLOCK_SECONDS * file_rate))
        frames_read = 0
        while True:
            try:
                if frames_read == 0:
                    self._file.seek(0)
                block = self._file.read(block_frames, dtype="float32", always_2d=True)
            except sf.LibsndfileError as error:
                yield from _flush(resampler)
                raise AudioError(
                    f"audio data is truncated or corrupt after {frames_read / file_rate:.2f} s ({error.error_string})"
                ) from None
            if block.shape[0] == 0:
                break
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                good = int(finite.argmin())
                if good:
                    yield _resample(block[:good].mean(axis=1), resampler, last=False)
                yield from _flush(resampler)
                raise AudioError(f"non-finite samples (NaN or Inf) at {(frames_read + good) / file_rate:.2f} s")
            frames_read += block.shape[0]
            yield _resample(block.mean(axis=1), resampler, last=False)
        yield from _flush(resampler)
        if self._truncation is not None:
            raise AudioError(f"{self._truncation} (audio ends at {frames_read / file_rate:.2f} s)")

    def read(self) -> np.ndarray:
        """All samples at once, ``(T,)`` float32 (:meth:`blocks` joined).

        Raises:
            AudioError: as :meth:`blocks`, and when the file holds no samples.
        """
        audio = np.concatenate([np.zeros(0, dtype=np.float32), *self.blocks()])
        if audio.size == 0:
            raise AudioError("no audio samples")
        return audio

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read an audio file whole as mono float32 samples at ``sample_rate`` (see :class:`AudioReader`).

    Returns:
        Samples, shape ``(T,)``.

    Raises:
        AudioError: the file is missing, empty, not audio, truncated or corrupt, holds no samples, or holds
            NaN/Inf samples.
    """
    with AudioReader(path, sample_rate) as reader:
        return reader.read()


def _resample(samples: np.ndarray, resampler: Optional[soxr.ResampleStream], last: bool) -> np.ndarray:
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    return samples if resampler is None else resampler.resample_chunk(samples, last=last)


def _flush(resampler: Optional[soxr.ResampleStream]) -> Iterator[np.ndarray]:
    """The samples a streaming resampler still holds back, as one last block (none without a resampler)."""
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail


def _wav_truncation(path: Path) -> Optional[str]:
    """Why a RIFF/WAVE file is short: it holds fewer data bytes than its header declares; None if it is not.

    libsndfile reads a truncated WAV without complaint (it shortens the length to what is there), so the data
    chunk's declared size is compared with the bytes that follow it.
    """
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        file_size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, declared = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                present = file_size - f.tell()
                if declared > present and declared not in _UNKNOWN_RIFF_SIZES:
                    return f"truncated: the header declares {declared} data bytes, the file holds {present}"
                return None
            f.seek(declared + declared % 2, os.SEEK_CUR)
