"""Pre-flight check of NeMo training manifests: find the utterances a CTC run cannot use before any compute.

Every record is checked against its audio file's header (no decoding, so a LibriSpeech-sized manifest takes
seconds) and against the model:

- the audio file is missing, unreadable, or holds no samples; an ``offset``/``duration`` segment runs past its end
- the ``duration`` field is zero, missing or disagrees with the file (it is corrected from the header: NeMo
  filters and buckets by this field, while it loads the real audio)
- the transcript has characters outside the model's vocabulary after normalization: for a character model,
  outside its labels (transcripts lower-cased, single spaces); for a sub-word model (a NeMo tokenizer), characters
  the tokenizer can only spell as ``<unk>`` (single spaces; case is the tokenizer's business)
- the transcript needs more CTC frames than the encoder outputs for the audio: one frame per output unit
  (character or sub-word piece) plus a blank between two equal neighbours, against
  ``ceil((samples // hop + 1) / subsampling_factor)`` frames

Records with a problem are dropped from the cleaned manifest and counted in the report, never silently. A
problem is fatal (:class:`ManifestCheckError`, raised with the report) when no record is left or when more than
``max_dropped_fraction`` of the records would be dropped: that many bad records point at a wrong audio folder
or vocabulary, not at a few broken files.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import soundfile as sf
from tqdm.auto import tqdm

from ibnet_nemo.data.manifest import read_manifest, write_manifest

__all__ = [
    "DURATION_TOLERANCE_S",
    "ManifestCheckError",
    "ManifestReport",
    "SubwordUnits",
    "check_manifest",
    "ctc_frames_needed",
    "encoder_frames",
    "normalize_transcript",
]

#: Manifest durations are usually rounded; a larger disagreement with the audio header is corrected.
DURATION_TOLERANCE_S = 0.05
#: Examples kept per problem kind in the report.
EXAMPLES_PER_PROBLEM = 3

MISSING = "missing audio file"
UNREADABLE = "unreadable audio file"
EMPTY = "audio file holds no samples"
PAST_END = "offset + duration runs past the end of the audio"
MALFORMED = "record lacks audio_filepath or text, or a segment (offset) lacks a positive duration"
OUT_OF_VOCABULARY = "characters outside the vocabulary"
TOO_SHORT = "transcript longer than the encoder's output frames"


class ManifestCheckError(RuntimeError):
    """A manifest cannot be trained on; the message is the full report."""


@dataclass
class ManifestReport:
    """What :func:`check_manifest` found in one manifest.

    Attributes:
        manifest: the manifest checked.
        total: records read.
        kept: records written to the cleaned manifest.
        dropped: records dropped, by problem.
        examples: up to :data:`EXAMPLES_PER_PROBLEM` examples (``file: detail``) per problem.
        normalized: transcripts changed by normalization (:attr:`normalization` says which).
        corrected_durations: ``duration`` fields replaced by the audio's real duration.
        unaligned_kept: records too long for CTC that were kept (``drop_unalignable=False``).
        out_of_vocabulary: count of every character outside the vocabulary, over all transcripts.
        normalization: what normalization does to a transcript, for the report.
        cleaned_manifest: where the kept records were written (``None``: nothing changed, use ``manifest``).
        fatal: why training must not start on this manifest (empty: it may).
    """

    manifest: Path
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))
    normalized: int = 0
    corrected_durations: int = 0
    unaligned_kept: int = 0
    out_of_vocabulary: Counter = field(default_factory=Counter)
    normalization: str = "lower case, single spaces"
    cleaned_manifest: Path | None = None
    fatal: list = field(default_factory=list)

    def note(self, problem: str, example: str) -> None:
        """Count one record with ``problem`` and keep it as an example while there are few."""
        self.dropped[problem] += 1
        if len(self.examples[problem]) < EXAMPLES_PER_PROBLEM:
            self.examples[problem].append(example)

    def format(self) -> str:
        """The report as printed before training."""
        lines = [f"Manifest check: {self.manifest}", f"  {self.total} records, {self.kept} kept"]
        for problem, count in self.dropped.most_common():
            lines.append(f"  dropped {count}: {problem}")
            lines += [f"      e.g. {example}" for example in self.examples[problem]]
        if self.out_of_vocabulary:
            chars = ", ".join(f"{char!r} x{count}" for char, count in self.out_of_vocabulary.most_common(10))
            lines.append(f"  characters outside the vocabulary: {chars}")
        if self.normalized:
            lines.append(f"  normalized {self.normalized} transcripts ({self.normalization})")
        if self.corrected_durations:
            lines.append(f"  corrected {self.corrected_durations} durations from the audio headers")
        if self.unaligned_kept:
            lines.append(f"  kept {self.unaligned_kept} transcripts too long for CTC (evaluation data is not pruned)")
        if self.cleaned_manifest is not None:
            lines.append(f"  cleaned manifest: {self.cleaned_manifest}")
        lines += [f"  FATAL: {reason}" for reason in self.fatal]
        return "\n".join(lines)


_SPACES = re.compile(r"\s+")


def normalize_transcript(text: str) -> str:
    """Lower-case ``text`` and collapse runs of whitespace into single spaces."""
    return _collapse_spaces(text.lower())


def _collapse_spaces(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def ctc_frames_needed(units: Sequence) -> int:
    """Frames CTC needs to emit ``units`` (a string of characters or a list of token ids): one per unit, plus a
    blank between two equal neighbours."""
    repeats = sum(1 for previous, current in zip(units, units[1:]) if previous == current)
    return len(units) + repeats


class _CharacterUnits:
    """A character model's output units: transcripts lower-cased, one unit per character of ``labels``."""

    normalization = "lower case, single spaces"

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = frozenset(labels)

    def normalize(self, text: str) -> str:
        return normalize_transcript(text)

    def outside(self, text: str) -> list[str]:
        return [char for char in text if char not in self.labels]

    def encode(self, text: str) -> Sequence:
        return text


class SubwordUnits:
    """A sub-word model's output units: the ids of a NeMo tokenizer (``model.tokenizer`` of an
    ``EncDecCTCModelBPE``, or ``SentencePieceTokenizer(model_path=...)``).

    Transcripts only get single spaces: a tokenizer built with ``lower_case`` folds case itself, one built
    without it has upper-case pieces that lower-casing would hide. A character is outside the vocabulary when the
    tokenizer spells it with ``<unk>``.
    """

    normalization = "single spaces"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._unknown: dict[str, bool] = {}

    def normalize(self, text: str) -> str:
        return _collapse_spaces(text)

    def outside(self, text: str) -> list[str]:
        for char in set(text) - self._unknown.keys():
            self._unknown[char] = self.tokenizer.unk_id in self.tokenizer.text_to_ids(char)
        return [char for char in text if self._unknown[char]]

    def encode(self, text: str) -> Sequence:
        return self.tokenizer.text_to_ids(text)


def encoder_frames(num_samples: int, hop_length: int, subsampling_factor: int) -> int:
    """Encoder output frames for ``num_samples`` audio samples.

    NeMo's mel preprocessor (centered STFT) gives ``num_samples // hop_length + 1`` frames; the encoder's
    strided convolutions keep ``ceil(frames / subsampling_factor)`` of them.
    """
    return math.ceil((num_samples // hop_length + 1) / subsampling_factor)


def _resolve_audio(audio_filepath: str, manifest_dir: Path) -> Path:
    """An absolute audio path; relative ones are looked up beside the manifest first (as NeMo does)."""
    path = Path(os.path.expanduser(audio_filepath))
    if path.is_absolute():
        return path
    beside_manifest = manifest_dir / path
    return (beside_manifest if beside_manifest.exists() else path).resolve()


def check_manifest(
    manifest: str | os.PathLike,
    labels: Optional[Sequence[str]],
    sample_rate: int,
    hop_length: int,
    subsampling_factor: int,
    cleaned_dir: str | os.PathLike,
    max_dropped_fraction: float,
    drop_unalignable: bool = True,
    subwords: Optional[SubwordUnits] = None,
) -> ManifestReport:
    """Check ``manifest`` and write its usable records to ``cleaned_dir`` when any record changed.

    Args:
        manifest: NeMo manifest (JSON lines with ``audio_filepath``, ``duration``, ``text``).
        labels: a character model's output characters (without the CTC blank); ``None`` with ``subwords``.
        sample_rate: the model's sample rate; NeMo resamples audio to it on loading.
        hop_length: preprocessor hop in samples (``window_stride * sample_rate``).
        subsampling_factor: the encoder's time reduction (2 for IBNet and QuartzNet).
        cleaned_dir: folder for the cleaned manifest, written as ``<manifest name>`` when records were dropped,
            normalized or corrected.
        max_dropped_fraction: above this fraction of dropped records the manifest is refused (fatal).
        drop_unalignable: drop transcripts longer than the encoder's frames (training); keep and count them
            for evaluation data, where dropping them would flatter the WER.
        subwords: a sub-word model's units (``SubwordUnits(tokenizer)``), in place of ``labels``. (Default: None)

    Returns:
        The report; ``report.fatal`` lists the reasons not to train, if any.

    Raises:
        ValueError: an argument is out of range, or a manifest line is not a JSON object.
        FileNotFoundError: the manifest does not exist.
    """
    if sample_rate <= 0 or hop_length <= 0 or subsampling_factor <= 0:
        raise ValueError(
            f"sample_rate, hop_length and subsampling_factor must be positive, got {sample_rate}, {hop_length}, "
            f"{subsampling_factor}"
        )
    if not 0.0 <= max_dropped_fraction <= 1.0:
        raise ValueError(f"max_dropped_fraction must lie in [0, 1], got {max_dropped_fraction}")
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    if (labels is None) == (subwords is None):
        raise ValueError("give exactly one of labels (a character model) and subwords (a sub-word model)")
    units = subwords if subwords is not None else _CharacterUnits(labels)
    report = ManifestReport(manifest=manifest, normalization=units.normalization)
    kept, changed = [], False
    for record in tqdm(read_manifest(manifest), desc=f"checking {manifest.name}", unit=" records"):
        report.total += 1
        checked = _check_record(
            record, manifest.parent, units, sample_rate, hop_length, subsampling_factor, drop_unalignable, report
        )
        if checked is not None:
            kept.append(checked)
            changed |= checked != record
    report.kept = len(kept)
    changed |= report.kept != report.total

    if report.kept == 0:
        report.fatal.append("no usable record left")
    elif report.total - report.kept > max_dropped_fraction * report.total:
        report.fatal.append(
            f"{report.total - report.kept} of {report.total} records would be dropped, more than "
            f"max_dropped_fraction={max_dropped_fraction}: check the audio paths and the vocabulary"
        )
    if changed and not report.fatal:
        report.cleaned_manifest = write_manifest(Path(cleaned_dir) / manifest.name, kept)
    return report


def _check_record(
    record: dict,
    manifest_dir: Path,
    units: _CharacterUnits | SubwordUnits,
    sample_rate: int,
    hop_length: int,
    subsampling_factor: int,
    drop_unalignable: bool,
    report: ManifestReport,
) -> dict | None:
    """The record as it goes into the cleaned manifest, or ``None`` after noting why it is dropped."""
    if not isinstance(record.get("audio_filepath"), str) or not isinstance(record.get("text"), str):
        report.note(MALFORMED, str(record)[:120])
        return None
    audio = _resolve_audio(record["audio_filepath"], manifest_dir)
    if not audio.is_file():
        report.note(MISSING, str(audio))
        return None
    try:
        info = sf.info(str(audio))
    except (sf.LibsndfileError, RuntimeError) as error:
        report.note(UNREADABLE, f"{audio}: {str(error).strip()}")
        return None
    if info.frames == 0:
        report.note(EMPTY, str(audio))
        return None

    file_duration = info.frames / info.samplerate
    offset = record.get("offset")
    duration = record.get("duration")
    if offset is not None:
        # A segment of the file: its duration is the segment's, checked against the file's end.
        if not isinstance(offset, (int, float)) or not isinstance(duration, (int, float)) or duration <= 0:
            report.note(MALFORMED, f"{audio}: offset {offset!r} with duration {duration!r}")
            return None
        if offset + duration > file_duration + DURATION_TOLERANCE_S:
            report.note(PAST_END, f"{audio}: {offset} + {duration} s > {file_duration:.2f} s")
            return None
    elif not isinstance(duration, (int, float)) or abs(duration - file_duration) > DURATION_TOLERANCE_S:
        report.corrected_durations += 1
        duration = file_duration

    text = units.normalize(record["text"])
    if text != record["text"]:
        report.normalized += 1
    outside = units.outside(text)
    if outside:
        report.out_of_vocabulary.update(outside)
        report.note(OUT_OF_VOCABULARY, f"{audio}: {''.join(sorted(set(outside)))!r} in {text[:60]!r}")
        return None

    available = encoder_frames(round(duration * sample_rate), hop_length, subsampling_factor)
    needed = ctc_frames_needed(units.encode(text))
    if needed > available:
        if drop_unalignable:
            report.note(TOO_SHORT, f"{audio}: {needed} frames needed, {available} available")
            return None
        report.unaligned_kept += 1
    return {**record, "audio_filepath": str(audio), "duration": duration, "text": text}
