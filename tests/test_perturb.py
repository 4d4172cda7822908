"""The plugin's speed perturbation: ``change_speed``, and ``speed_soxr`` for NeMo's audio augmentor."""

from __future__ import annotations

import random

import numpy as np
import pytest
from nemo.collections.asr.parts.preprocessing.perturb import process_augmentations
from nemo.collections.asr.parts.preprocessing.segment import AudioSegment

import ibnet_nemo  # noqa: F401  (registers speed_soxr)
from ibnet_nemo.data.perturb import SPEED_PERTURBATION, SoxrSpeedPerturbation, change_speed

SR = 16000


def _tone(hz: float, seconds: float = 1.0) -> AudioSegment:
    t = np.arange(int(seconds * SR)) / SR
    return AudioSegment(samples=(0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), sample_rate=SR)


def _peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / SR)[spectrum.argmax()])


@pytest.mark.parametrize("rate", [0.85, 0.9, 1.1, 1.15])
def test_a_rate_scales_length_and_divides_pitch(rate):
    segment = _tone(1000.0)
    SoxrSpeedPerturbation(SR, min_speed_rate=rate, max_speed_rate=rate, num_rates=1).perturb(segment)
    # As NeMo's `speed`: `rate` times as long, so played at SR every frequency is divided by `rate`.
    assert len(segment.samples) == round(SR * rate)
    assert _peak_hz(segment.samples) == pytest.approx(1000.0 / rate, abs=2.0)
    assert segment.samples.dtype == np.float32


def test_rate_one_leaves_the_audio_untouched():
    segment = _tone(440.0)
    before = segment._samples
    perturbation = SoxrSpeedPerturbation(SR, min_speed_rate=1.0, max_speed_rate=1.0, num_rates=1)
    perturbation.perturb(segment)
    assert segment._samples is before


def test_rates_are_drawn_from_the_grid_or_the_range():
    random.seed(0)
    grid = SoxrSpeedPerturbation(SR, min_speed_rate=0.85, max_speed_rate=1.15, num_rates=7)
    lengths = set()
    for _ in range(200):
        segment = _tone(440.0, 0.1)
        grid.perturb(segment)
        lengths.add(len(segment.samples))
    assert lengths == {round(1600 * rate) for rate in np.linspace(0.85, 1.15, 7)}

    uniform = SoxrSpeedPerturbation(SR, min_speed_rate=0.8, max_speed_rate=1.2, num_rates=0)
    ratios = []
    for _ in range(200):
        segment = _tone(440.0, 0.1)
        uniform.perturb(segment)
        ratios.append(len(segment.samples) / 1600)
    assert 0.8 <= min(ratios) < 0.85 and 1.15 < max(ratios) <= 1.2
    assert len(set(ratios)) > 50
    assert uniform.max_augmentation_length(2.0) == pytest.approx(2.4)


def test_nemo_builds_it_from_an_augmentor_config():
    assert SPEED_PERTURBATION == "speed_soxr"
    augmentor = process_augmentations(
        {SPEED_PERTURBATION: {"prob": 1.0, "sr": SR, "min_speed_rate": 1.1, "max_speed_rate": 1.1, "num_rates": 1}}
    )
    ((prob, perturbation),) = augmentor._pipeline
    assert prob == 1.0 and isinstance(perturbation, SoxrSpeedPerturbation)
    segment = _tone(1000.0)
    augmentor.perturb(segment)
    assert len(segment.samples) == round(SR * 1.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sr": 0}, "sr must be > 0, got 0"),
        ({"sr": SR, "min_speed_rate": 0.0}, "0 < min_speed_rate <= max_speed_rate, got 0.0, 1.1"),
        ({"sr": SR, "min_speed_rate": 1.2, "max_speed_rate": 1.1}, "got 1.2, 1.1"),
        ({"sr": SR, "quality": "best"}, "quality must be one of .* got 'best'"),
    ],
)
def test_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoxrSpeedPerturbation(**kwargs)


def test_change_speed_on_plain_audio():
    tone = _tone(1000.0).samples
    slower = change_speed(tone, SR, 1.25)
    assert len(slower) == round(SR * 1.25) and _peak_hz(slower) == pytest.approx(800.0, abs=2.0)
    with pytest.raises(ValueError, match="rate must be > 0, got -1"):
        change_speed(tone, SR, -1)
