"""Speed perturbation for NeMo's audio augmentor (``train_ds.augmentor``), resampled with soxr.

``import ibnet_nemo`` registers it with NeMo under :data:`SPEED_PERTURBATION`, so a config selects it as it
selects NeMo's own ``speed``::

    train_ds:
      augmentor:
        speed_soxr:
          prob: 1.0
          sr: 16000
          min_speed_rate: 0.9
          max_speed_rate: 1.1
          num_rates: 5
"""

from __future__ import annotations

import math
import random

import numpy as np
import soxr
from nemo.collections.asr.parts.preprocessing.perturb import Perturbation

#: The name of :class:`SoxrSpeedPerturbation` among NeMo's augmentations.
SPEED_PERTURBATION = "speed_soxr"

SOXR_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


def change_speed(samples: np.ndarray, sample_rate: int, rate: float, quality: str = "HQ") -> np.ndarray:
    """Speech ``rate`` times as long, its pitch ``1 / rate`` times as high (tempo and pitch together, as a tape
    played slower or faster): ``samples`` resampled from ``sample_rate`` to ``sample_rate * rate`` with soxr.

    Args:
        samples: audio, shape ``(T,)``.
        sample_rate: its sample rate, also the rate of the result.
        rate: how many times as long the result is, > 0; above 1 slower and lower.
        quality: soxr's quality, one of :data:`SOXR_QUALITIES`. (Default: "HQ")

    Returns:
        the audio, shape ``(about T * rate,)``.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    return soxr.resample(samples, sample_rate, sample_rate * rate, quality=quality)


class SoxrSpeedPerturbation(Perturbation):
    """NeMo's ``speed`` perturbation (tempo and pitch together, by resampling) on soxr's resampler.

    The same rates as NeMo's ``speed``: ``num_rates`` evenly spaced from ``min_speed_rate`` to ``max_speed_rate``
    (drawn with Python's ``random``, as NeMo draws; a rate of 1.0 leaves the audio as it is), or, for
    ``num_rates <= 0``, a rate drawn uniformly from that range. As in NeMo, the audio comes out ``rate`` times as
    long: a rate above 1 slows it down and lowers its pitch (:func:`change_speed`).

    NeMo's own resamplers are slow next to a CPU training step: ``scipy``/``fft`` take about 2 ms per 2-second
    utterance (up to 12 ms), and ``kaiser_*`` need ``resampy`` (10-40 ms). soxr, installed with librosa, takes
    about 0.25 ms.

    Args:
        sr: the audio's sample rate.
        min_speed_rate: the slowest rate, > 0. (Default: 0.9)
        max_speed_rate: the fastest rate, >= ``min_speed_rate``. (Default: 1.1)
        num_rates: how many rates; <= 0 draws from the continuous range. (Default: 5)
        quality: soxr's quality, one of :data:`SOXR_QUALITIES`. (Default: "HQ")
        rng: a seed for Python's ``random`` (NeMo's convention), or ``None``. (Default: None)
    """

    def __init__(
        self,
        sr: int,
        min_speed_rate: float = 0.9,
        max_speed_rate: float = 1.1,
        num_rates: int = 5,
        quality: str = "HQ",
        rng: int | None = None,
    ):
        if sr <= 0:
            raise ValueError(f"sr must be > 0, got {sr}")
        if not 0 < min_speed_rate <= max_speed_rate:
            raise ValueError(
                f"speed rates must satisfy 0 < min_speed_rate <= max_speed_rate, got {min_speed_rate}, {max_speed_rate}"
            )
        if quality not in SOXR_QUALITIES:
            raise ValueError(f"quality must be one of {SOXR_QUALITIES}, got {quality!r}")
        self._sr = sr
        self._min_rate = min_speed_rate
        self._max_rate = max_speed_rate
        self._rates = np.linspace(min_speed_rate, max_speed_rate, num_rates) if num_rates > 0 else None
        self._quality = quality
        if rng is not None:
            random.seed(rng)

    def max_augmentation_length(self, length: float) -> float:
        return length * self._max_rate

    def perturb(self, data) -> None:
        if self._rates is None:
            rate = random.uniform(self._min_rate, self._max_rate)
        else:
            rate = float(random.choice(self._rates))
        if math.isclose(rate, 1.0):
            return
        data._samples = change_speed(data._samples, self._sr, rate, self._quality)
