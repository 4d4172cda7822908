"""Build (or reuse) the demo corpus: synthetic train / validation / held-out-voice test sets and the real test set.

Everything lands under one folder with NeMo manifests beside the audio; ``corpus.json`` records the spec it was
built from, so a second build with the same spec finds every file and returns at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ibnet_nemo.data.manifest import read_manifest, write_manifest
from ibnet_nemo.data.perturb import change_speed
from ibnet_nemo.demo.real_speech import ASTERISK_SOUNDS, ASTERISK_TRANSCRIPTS, build_real_test_set
from ibnet_nemo.demo.synthesis import (
    HELDOUT_VOICES,
    TRAIN_VOICES,
    Utterance,
    Voice,
    available_voices,
    synthesize_many,
)
from ibnet_nemo.demo.vocabulary import random_transcript, spoken_form

__all__ = ["REAL_TEST_SET", "SPLITS", "TEST_SPLITS", "CorpusSpec", "build_corpus", "corpus_summary"]

#: The test set of real human recordings, by its name in the results.
REAL_TEST_SET = "real_human"
#: Test-set name in the results -> its manifest split: voices held out of training, and real recordings.
TEST_SPLITS = {name: f"test_{name}" for name in ("synthetic_heldout", REAL_TEST_SET)}
#: Manifest names (``<split>.json``) the corpus writes.
SPLITS = ("train", "val", *TEST_SPLITS.values())


@dataclass(frozen=True)
class CorpusSpec:
    """What the corpus holds. Two builds with equal specs give identical corpora.

    Args:
        train_utterances: synthetic training utterances. (Default: 8000)
        val_utterances: validation utterances (training voices, new texts). (Default: 300)
        test_utterances: held-out-voice test utterances. (Default: 400)
        train_voices: voices of train and val. (Default: :data:`~ibnet_nemo.demo.synthesis.TRAIN_VOICES`)
        heldout_voices: voices of the synthetic test set only; none may share a speaker with ``train_voices``.
            (Default: :data:`~ibnet_nemo.demo.synthesis.HELDOUT_VOICES`)
        engine_shares: fraction of utterances per engine (voices of an engine share its part evenly; an engine
            left out here, or whose voices are not installed, gets none and the others share its part).
            (Default: a fifth Kokoro blends, 40 % Debian main's voices, the rest the single-speaker voices)
        rate_range: speaking-rate factor range (> 1 slower). (Default: (0.8, 1.3))
        pitch_range: pitch factor range. (Default: (0.88, 1.15))
        telephone_fraction: share of train/val utterances passed through the telephone band. (Default: 0.5)
        noise_fraction: share of train/val utterances with white noise. (Default: 0.5)
        snr_range_db: noise level range. (Default: (15, 40))
        max_tokens: most tokens per utterance. (Default: 7)
        single_token_fraction: share of the training utterances that say one token alone, as the real test set's
            prompts do; the others, and every validation and test utterance, have 1..``max_tokens`` tokens, drawn
            uniformly. (Default: 0.2)
        speed_copies: every training utterance is also written at each of these speeds, ``factor`` times as long
            and ``1 / factor`` times as high (NeMo's speed perturbation, done once when the corpus is built: the
            training batches are then sorted by their true durations, and the data loader resamples nothing).
            Validation and test utterances have no copies. (Default: (0.9, 1.1))
        seed: random seed. (Default: 0)
        real_sounds_dir: folder of the asterisk prompt WAVs (8 kHz). (Default: Debian's path)
        real_transcripts: ``core-sounds-en.txt.gz``. (Default: Debian's path)
    """

    train_utterances: int = 8000
    val_utterances: int = 300
    test_utterances: int = 400
    train_voices: tuple[Voice, ...] = TRAIN_VOICES
    heldout_voices: tuple[Voice, ...] = HELDOUT_VOICES
    engine_shares: dict[str, float] = field(
        default_factory=lambda: {
            "kokoro": 0.2,
            "flite": 0.1,
            "festival": 0.15,
            "espeak-ng": 0.2,
            "rhvoice": 0.12,
            "mbrola": 0.12,
            "pico": 0.06,
            "piper": 0.05,
        }
    )
    rate_range: tuple[float, float] = (0.8, 1.3)
    pitch_range: tuple[float, float] = (0.88, 1.15)
    telephone_fraction: float = 0.5
    noise_fraction: float = 0.5
    snr_range_db: tuple[float, float] = (15.0, 40.0)
    max_tokens: int = 7
    single_token_fraction: float = 0.2
    speed_copies: tuple[float, ...] = (0.9, 1.1)
    seed: int = 0
    real_sounds_dir: str = ASTERISK_SOUNDS
    real_transcripts: str = ASTERISK_TRANSCRIPTS

    def __post_init__(self):
        for name in ("train_utterances", "val_utterances", "test_utterances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        both = {v.speaker for v in self.train_voices} & {v.speaker for v in self.heldout_voices}
        if both:
            raise ValueError(f"speakers both trained on and held out: {sorted(both)}")
        for name in ("telephone_fraction", "noise_fraction", "single_token_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if any(factor <= 0 or factor == 1 for factor in self.speed_copies):
            raise ValueError(f"speed_copies must be > 0 and not 1, got {self.speed_copies}")
        if any(share < 0 for share in self.engine_shares.values()) or sum(self.engine_shares.values()) <= 0:
            raise ValueError(f"engine_shares must be non-negative with a positive sum, got {self.engine_shares}")

    def fingerprint(self) -> dict:
        """The spec as plain JSON data (what ``corpus.json`` stores)."""
        return json.loads(json.dumps(asdict(self), default=str))


def _voice_weights(voices: tuple[Voice, ...], shares: dict[str, float]) -> np.ndarray:
    weights = np.array([shares.get(v.engine, 0.0) / sum(u.engine == v.engine for u in voices) for v in voices])
    if weights.sum() <= 0:
        raise ValueError(f"engine_shares {shares} give no weight to any of the voices {[v.key for v in voices]}")
    return weights / weights.sum()


def _plan_split(
    spec: CorpusSpec, split: str, count: int, voices: tuple[Voice, ...], augment: bool, audio_dir: Path, seed: int
) -> list[tuple[Voice, Utterance, str]]:
    """``count`` (voice, utterance, transcript) triples with random texts, voices, prosody and channel."""
    rng = np.random.default_rng(seed)
    weights = _voice_weights(voices, spec.engine_shares)
    plan = []
    for index in range(count):
        single = split == "train" and rng.random() < spec.single_token_fraction
        transcript = random_transcript(rng, max_tokens=1 if single else spec.max_tokens)
        voice = voices[int(rng.choice(len(voices), p=weights))]
        telephone = augment and rng.random() < spec.telephone_fraction
        noisy = augment and rng.random() < spec.noise_fraction
        utterance = Utterance(
            text=spoken_form(transcript),
            path=audio_dir / split / f"{split}_{index:05d}_{voice.key.replace('+', '-')}.wav",
            rate=float(rng.uniform(*spec.rate_range)),
            pitch=float(rng.uniform(*spec.pitch_range)),
            telephone=bool(telephone),
            snr_db=float(rng.uniform(*spec.snr_range_db)) if noisy else None,
            seed=int(rng.integers(2**31)),
        )
        plan.append((voice, utterance, transcript))
    return plan


def _synthesize_plan(plan: list[tuple[Voice, Utterance, str]], description: str, workers: int) -> list[dict]:
    """Synthesize a plan in worker processes; returns manifest records (with voice and speaker) in plan order."""
    durations = synthesize_many([(voice, utterance) for voice, utterance, _ in plan], workers, description)
    return [
        {
            "audio_filepath": str(utterance.path),
            "duration": round(duration, 3),
            "text": transcript,
            "voice": voice.key,
            "speaker": voice.speaker,
            "voice_source": voice.source,
        }
        for (voice, utterance, transcript), duration in zip(plan, durations)
    ]


def _speed_copies(records: list[dict], factors: tuple[float, ...]) -> list[dict]:
    """Writes each record's audio at each speed factor beside it (``<name>_speed<factor>.wav``); returns the copies'
    records (with their ``speed``), factor by factor."""
    copies: dict[float, list[dict]] = {factor: [] for factor in factors}
    for record in records:
        source = Path(record["audio_filepath"])
        audio, sample_rate = sf.read(source, dtype="float32")
        for factor in factors:
            copy = change_speed(audio, sample_rate, factor)
            path = source.with_name(f"{source.stem}_speed{factor:g}.wav")
            sf.write(path, copy, sample_rate, subtype="PCM_16")
            duration = round(len(copy) / sample_rate, 3)
            copies[factor].append({**record, "audio_filepath": str(path), "duration": duration, "speed": factor})
    return [copy for factor in factors for copy in copies[factor]]


def _cached(root: Path, spec: CorpusSpec) -> dict[str, Path] | None:
    """The manifests of a finished build of ``spec`` under ``root`` whose audio files all exist, else None."""
    stamp = root / "corpus.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != spec.fingerprint():
        return None
    manifests = {split: root / f"{split}.json" for split in SPLITS}
    for manifest in manifests.values():
        if not manifest.is_file() or not all(Path(r["audio_filepath"]).is_file() for r in read_manifest(manifest)):
            return None
    return manifests


def build_corpus(
    root: str | os.PathLike, spec: CorpusSpec = CorpusSpec(), workers: int | None = None
) -> dict[str, Path]:
    """Build the demo corpus under ``root`` (or reuse a finished build of the same spec).

    Voices whose source is not installed here are left out (with a message naming them); ``corpus.json`` records
    the spec with the voices actually used.

    Args:
        root: output folder: ``audio/<split>/*.wav``, ``<split>.json`` manifests, ``corpus.json``.
        spec: what to build. (Default: ``CorpusSpec()``)
        workers: synthesis worker processes. (Default: the number of CPUs)

    Returns:
        ``{split: manifest path}`` for every split in :data:`SPLITS`.
    """
    root = Path(root).resolve()
    spec = dataclasses.replace(
        spec, train_voices=available_voices(spec.train_voices), heldout_voices=available_voices(spec.heldout_voices)
    )
    cached = _cached(root, spec)
    if cached is not None:
        print(f"Corpus: reusing {root} (same spec, all files present)")
        return cached
    (root / "corpus.json").unlink(missing_ok=True)
    workers = workers or os.cpu_count() or 1
    audio_dir = root / "audio"
    plans = {
        "train": _plan_split(spec, "train", spec.train_utterances, spec.train_voices, True, audio_dir, spec.seed),
        "val": _plan_split(spec, "val", spec.val_utterances, spec.train_voices, True, audio_dir, spec.seed + 1),
        "test_synthetic_heldout": _plan_split(
            spec, "test_synthetic_heldout", spec.test_utterances, spec.heldout_voices, False, audio_dir, spec.seed + 2
        ),
    }
    manifests = {}
    for split, plan in plans.items():
        records = _synthesize_plan(plan, f"Synthesizing {split}", workers)
        if split == "train" and spec.speed_copies:
            print(f"Corpus: writing the training utterances at speeds {', '.join(map(str, spec.speed_copies))}")
            records += _speed_copies(records, spec.speed_copies)
        manifests[split] = write_manifest(root / f"{split}.json", records)
    real_records = build_real_test_set(spec.real_sounds_dir, spec.real_transcripts, audio_dir / "test_real_human")
    manifests["test_real_human"] = write_manifest(root / "test_real_human.json", real_records)
    (root / "corpus.json").write_text(json.dumps(spec.fingerprint(), indent=1) + "\n")
    for split, manifest in manifests.items():
        records = list(read_manifest(manifest))
        hours = sum(r["duration"] for r in records) / 3600
        print(f"Corpus: {split}: {len(records)} utterances, {hours:.2f} h -> {manifest}")
    return manifests


def corpus_summary(manifests: dict[str, Path]) -> dict:
    """What a built corpus holds, for ``results.json``.

    Returns:
        ``train_speakers``: distinct speakers of the training manifest; ``hours``: ``{split: {voice source: hours}}``
        (the real recordings under ``asterisk``).
    """
    hours: dict[str, dict[str, float]] = {}
    for split, manifest in manifests.items():
        per_source: dict[str, float] = {}
        for record in read_manifest(manifest):
            source = record.get("voice_source", "asterisk")
            per_source[source] = per_source.get(source, 0.0) + record["duration"] / 3600
        hours[split] = {source: round(value, 3) for source, value in sorted(per_source.items())}
    train_speakers = {record["speaker"] for record in read_manifest(manifests["train"])}
    return {"train_speakers": len(train_speakers), "hours": hours}
