"""Neural TTS voices run in-process with onnxruntime on espeak-ng's phonemes: Kokoro-82M (its English voices and
weighted blends of them) and Piper's joe voice.

The model files come from the voice cache (:mod:`ibnet_nemo.demo.install`). A process loads Kokoro once, on first
use, into one onnxruntime session with one intra-op thread: the corpus builder runs one such process per core.
Piper's VITS samples noise inside its graph from a generator seeded when the session is made, so a Piper session is
made per batch of utterances, from a seed: the same seed and texts give the same audio.
Text is phonemized one word per line, so that every word is read alone, as the task's utterances are meant: a
capital ``A`` is the letter, where ``A zero`` in running text would be read as the article.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

from ibnet_nemo.demo.install import (
    KOKORO_CONFIG,
    KOKORO_MODEL,
    KOKORO_VOICE_DIR,
    KOKORO_VOICES,
    PIPER_CONFIG,
    PIPER_MODEL,
)

__all__ = [
    "KOKORO_SAMPLE_RATE",
    "KokoroTTS",
    "PiperTTS",
    "espeak_phonemes",
    "kokoro_blend",
    "kokoro_phonemes",
    "kokoro_tts",
    "piper_tts",
]

#: Sample rate of Kokoro's output.
KOKORO_SAMPLE_RATE = 24000
_KOKORO_STYLES = 510  # rows of a voice file: one style per phoneme count 0..509
_BLEND_PART = re.compile(r"([ab][fm]_[a-z]+)(\d*)")

# espeak-ng's IPA (multi-letter phonemes tied with '^') -> Kokoro's English phonemes. Accent rules go first (the
# British diphthong e^ə must be seen before the general e -> A), then the shared ones, each sequence before the
# single letters it holds. Modelled on misaki's espeak-ng fallback (Kokoro's own G2P).
_BRITISH = (("e^ə", "ɛː"), ("iə", "ɪə"), ("ə^ʊ", "Q"))
_AMERICAN = (("o^ʊ", "O"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɪə", "iə"), ("ː", ""))
_SHARED = (
    ("ʔˌn\u0329", "tᵊn"),
    ("ʔn\u0329", "tᵊn"),
    ("ʔn", "tᵊn"),
    ("ʔ", "t"),  # glottal stops are t
    ("a^ɪ", "I"),
    ("a^ʊ", "W"),
    ("e^ɪ", "A"),
    ("ɔ^ɪ", "Y"),
    ("d^ʒ", "ʤ"),
    ("t^ʃ", "ʧ"),
    ("ə^l", "ᵊl"),
    ("ʲo", "jo"),
    ("ʲə", "jə"),
    ("ʲ", ""),
    ("ɚ", "əɹ"),
    ("\u0303", ""),
    ("e", "A"),
    ("r", "ɹ"),
    ("x", "k"),
    ("ç", "k"),
    ("ɐ", "ə"),
    ("ɬ", "l"),
)
_SYLLABIC = re.compile("(\\S)\u0329")  # a syllabic consonant n̩ is Kokoro's ᵊn


def espeak_phonemes(text: str, voice: str, tie: bool) -> list[str]:
    """espeak-ng's IPA of every word of ``text``, each read alone.

    Args:
        text: space-separated words.
        voice: espeak-ng voice (``en-us``, ``en-gb``).
        tie: join the letters of a multi-letter phoneme with ``^`` (``e^ɪ``) instead of writing them plainly.

    Raises:
        RuntimeError: espeak-ng failed or did not give one phoneme string per word.
    """
    words = text.split()
    command = ["espeak-ng", "-q", "--ipa", "-v", voice, *(["--tie=^"] if tie else [])]
    result = subprocess.run(command, input="\n".join(words), capture_output=True, text=True)
    phonemes = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or len(phonemes) != len(words):
        raise RuntimeError(f"espeak-ng -v {voice} gave {phonemes} for {words}: {result.stderr.strip()[-300:]}")
    return phonemes


def kokoro_phonemes(text: str, british: bool) -> str:
    """``text`` in Kokoro's English phonemes (misaki's inventory), through espeak-ng ``en-gb`` or ``en-us``."""
    words = []
    for ipa in espeak_phonemes(text, "en-gb" if british else "en-us", tie=True):
        for old, new in (*(_BRITISH if british else _AMERICAN), *_SHARED):
            ipa = ipa.replace(old, new)
        words.append(_SYLLABIC.sub("ᵊ\\1", ipa).replace("o", "ɔ").replace("^", ""))
    return " ".join(words)


def kokoro_blend(name: str) -> tuple[tuple[str, int], ...]:
    """The base voices and their weights in percent, heaviest first, of a Kokoro voice name.

    A name is one base voice (``af_heart``) or a blend of base voices with integer percent weights that add up to
    100, heaviest first (``af_bella55+bm_george45``).

    Raises:
        ValueError: the name is malformed, names a voice outside :data:`KOKORO_VOICES`, or its weights do not
            add up to 100 in non-increasing order.
    """
    parts = name.split("+")
    matches = [_BLEND_PART.fullmatch(part) for part in parts]
    if not all(matches) or (len(parts) == 1) != (matches[0].group(2) == ""):
        raise ValueError(f"Kokoro voice must be a base voice or blend like 'af_bella55+bm_george45', got {name!r}")
    blend = tuple((m.group(1), int(m.group(2) or 100)) for m in matches)
    unknown = [voice for voice, _ in blend if voice not in KOKORO_VOICES]
    weights = [weight for _, weight in blend]
    if unknown or len({voice for voice, _ in blend}) != len(blend):
        raise ValueError(f"Kokoro voice {name!r}: base voices must be distinct ones of KOKORO_VOICES, got {unknown}")
    if sum(weights) != 100 or min(weights) < 1 or weights != sorted(weights, reverse=True):
        raise ValueError(f"Kokoro voice {name!r}: weights must be >= 1, heaviest first, adding up to 100")
    return blend


def _onnx_session(model: Path, seed: int | None = None):
    """An onnxruntime CPU session with one thread (one process per core does the parallel work); ``seed`` seeds
    the random operators of its graph."""
    import onnxruntime

    if seed is not None:
        onnxruntime.set_seed(seed)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


class KokoroTTS:
    """Kokoro-82M in one onnxruntime session.

    Args:
        cache: the voice cache holding the model, its config and the voice files.
    """

    def __init__(self, cache: Path):
        self._vocabulary = json.loads((cache / KOKORO_CONFIG).read_text(encoding="utf-8"))["vocab"]
        self._voice_dir = cache / KOKORO_VOICE_DIR
        self._session = _onnx_session(cache / KOKORO_MODEL)
        self._styles: dict[str, np.ndarray] = {}

    def _style(self, name: str) -> np.ndarray:
        """The ``(510, 256)`` styles of a voice name: the weighted mean of its base voices' styles."""
        if name not in self._styles:
            styles = 0.0
            for voice, weight in kokoro_blend(name):
                raw = np.fromfile(self._voice_dir / f"{voice}.bin", dtype=np.float32)
                styles = styles + weight / 100.0 * raw.reshape(_KOKORO_STYLES, -1)
            self._styles[name] = np.asarray(styles, dtype=np.float32)
        return self._styles[name]

    def __call__(self, text: str, voice: str, speed: float = 1.0) -> np.ndarray:
        """Speak ``text`` with the Kokoro voice name ``voice`` (see :func:`kokoro_blend`) at ``speed`` (> 1 faster);
        returns float32 audio ``(T,)`` at :data:`KOKORO_SAMPLE_RATE`. The heaviest base voice sets the accent.

        Raises:
            ValueError: the text has more phonemes than Kokoro's styles cover.
        """
        british = kokoro_blend(voice)[0][0].startswith("b")
        ids = [self._vocabulary[p] for p in kokoro_phonemes(text, british) if p in self._vocabulary]
        if len(ids) >= _KOKORO_STYLES:
            raise ValueError(f"{text!r} has {len(ids)} phonemes; Kokoro takes fewer than {_KOKORO_STYLES}")
        audio = self._session.run(
            None,
            {
                "tokens": np.array([[0, *ids, 0]], dtype=np.int64),
                "style": self._style(voice)[len(ids)][None, :],
                "speed": np.array([speed], dtype=np.float32),
            },
        )[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)


class PiperTTS:
    """A Piper (VITS) voice in one onnxruntime session, phonemized by espeak-ng as its config says.

    Args:
        model: the voice's ``.onnx``.
        config: its ``.onnx.json`` (phoneme ids, espeak-ng voice, sample rate, inference scales).
        seed: seed of the model's noise: two sessions of one seed give the same audio for the same calls in the same
            order. (Default: 0)
    """

    def __init__(self, model: Path, config: Path, seed: int = 0):
        settings = json.loads(config.read_text(encoding="utf-8"))
        self.sample_rate = int(settings["audio"]["sample_rate"])
        self._ids = settings["phoneme_id_map"]
        self._espeak_voice = settings["espeak"]["voice"]
        self._scales = settings["inference"]
        self._session = _onnx_session(model, seed)

    def __call__(self, text: str, rate: float = 1.0) -> np.ndarray:
        """Speak ``text`` at speaking-rate factor ``rate`` (> 1 slower); returns float32 audio ``(T,)`` at
        :attr:`sample_rate`. VITS draws new noise on every call, so a second call of the same text differs."""
        ids = [*self._ids["^"], *self._ids["_"]]
        for phoneme in " ".join(espeak_phonemes(text, self._espeak_voice, tie=False)):
            if phoneme in self._ids:
                ids += [*self._ids[phoneme], *self._ids["_"]]
        ids += self._ids["$"]
        scales = [self._scales["noise_scale"], self._scales["length_scale"] * rate, self._scales["noise_w"]]
        audio = self._session.run(
            None,
            {
                "input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64),
                "scales": np.array(scales, dtype=np.float32),
            },
        )[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)


@lru_cache(maxsize=None)
def kokoro_tts(cache: Path) -> KokoroTTS:
    """This process's Kokoro session for the voice cache ``cache`` (loaded once)."""
    return KokoroTTS(cache)


def piper_tts(cache: Path, seed: int) -> PiperTTS:
    """A new Piper session for the voice cache ``cache``, its noise seeded with ``seed``."""
    return PiperTTS(cache / PIPER_MODEL, cache / PIPER_CONFIG, seed)
