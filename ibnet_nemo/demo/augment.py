"""Signal-level augmentation for the demo corpus: resampling, the telephone band, additive noise.

The real test recordings are 8 kHz telephone prompts, so part of the synthetic training speech is passed through
the same channel (8 kHz, G.711 mu-law, 300 Hz high-pass) and part gets noise; the model then sees both bands.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.signal import butter, resample_poly, sosfilt

__all__ = ["SAMPLE_RATE", "TELEPHONE_RATE", "add_noise", "resample", "telephone_band"]

#: Sample rate of every WAV the demo writes (the model's rate).
SAMPLE_RATE = 16000
#: Sample rate of the telephone channel (G.711).
TELEPHONE_RATE = 8000
_MU = 255.0
_HIGHPASS_HZ = 300.0


def resample(audio: np.ndarray, source_rate: float, target_rate: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal ``(T,)`` from ``source_rate`` to ``target_rate`` (ratio to 1/1000).

    Raises:
        ValueError: a rate is not positive.
    """
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    ratio = Fraction(target_rate / source_rate).limit_denominator(1000)
    if ratio == 1:
        return np.asarray(audio, dtype=np.float32)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def telephone_band(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Pass ``audio`` ``(T,)`` through a telephone channel and back to ``sample_rate``, keeping its length.

    Down to 8 kHz (nothing above 4 kHz survives), 8-bit mu-law companding, back up, 300 Hz high-pass.
    """
    if sample_rate <= TELEPHONE_RATE:
        raise ValueError(f"sample_rate must be above {TELEPHONE_RATE} Hz, got {sample_rate}")
    narrow = resample(audio, sample_rate, TELEPHONE_RATE)
    peak = max(float(np.abs(narrow).max()), 1e-9)
    x = np.clip(narrow / peak, -1.0, 1.0)
    code = np.round(np.sign(x) * np.log1p(_MU * np.abs(x)) / np.log1p(_MU) * 127.0) / 127.0
    narrow = peak * np.sign(code) * np.expm1(np.abs(code) * np.log1p(_MU)) / _MU
    wide = resample(narrow, TELEPHONE_RATE, sample_rate)
    highpass = butter(4, _HIGHPASS_HZ, btype="highpass", fs=sample_rate, output="sos")
    wide = sosfilt(highpass, wide).astype(np.float32)
    return np.pad(wide, (0, max(0, audio.size - wide.size)))[: audio.size]


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``audio`` ``(T,)`` plus white Gaussian noise at ``snr_db`` dB below the signal's mean power."""
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    noise = rng.standard_normal(audio.size) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (audio + noise).astype(np.float32)
