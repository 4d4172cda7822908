"""Word and segment times of CTC transcripts, in NeMo's field names, and the subtitle and CTM files made of them.

:func:`timed_transcripts` decodes log-probabilities with the model's decoding strategy and times each word:

- greedy (``greedy``, ``greedy_batch``): the tokens of the best path (the frame-wise argmax, as NeMo's greedy
  decoding takes it, long pauses made word boundaries as in decoding) each span their run of frames; NeMo's
  ``get_words_offsets`` groups them into words (space tokens for character models, the ``▁`` word marker for
  sub-word models), so a word runs from the first frame of its first token to the end of its last token's run.
- beam search with an LM (``pyctcdecode``): pyctcdecode's own word frames, which have the same meaning on the
  beam's best path.

Entries are NeMo's: ``{"word", "start_offset", "end_offset", "start", "end"}`` (offsets in output frames, end
exclusive; times in seconds), and segments ``{"segment", ...}`` likewise. Segments are cut for reading as
subtitles (:func:`subtitle_segments`); :func:`write_timed_file` writes SRT, WebVTT or CTM.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from nemo.collections.asr.models import EncDecCTCModel
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig
from nemo.collections.asr.parts.utils.timestamp_utils import get_words_offsets
from omegaconf import OmegaConf

from ibnet_nemo.fileio import atomic_path
from ibnet_nemo.inference import DecodingConfig, break_words_at_pauses, decode_hypotheses, frame_samples

__all__ = [
    "OUTPUT_FORMATS",
    "SEGMENT_MAX_CHARS",
    "SEGMENT_MAX_SECONDS",
    "SEGMENT_PAUSE_SECONDS",
    "TIMED_STRATEGIES",
    "TimedTranscript",
    "check_timed_output",
    "subtitle_segments",
    "timed_transcripts",
    "write_timed_file",
]

#: Decoding strategies whose words can be timed.
TIMED_STRATEGIES = ("greedy", "greedy_batch", "pyctcdecode")
#: Files :func:`write_timed_file` writes: SubRip and WebVTT subtitles (a cue per segment), NIST CTM (a line per word).
OUTPUT_FORMATS = ("srt", "vtt", "ctm")
#: A segment is at most this many characters (one subtitle line, the common broadcast limit) ...
SEGMENT_MAX_CHARS = 42
#: ... and lasts at most this many seconds (a longer single word stands alone) ...
SEGMENT_MAX_SECONDS = 5.0
#: ... and ends at a pause between words of at least this many seconds.
SEGMENT_PAUSE_SECONDS = 0.5


@dataclass(frozen=True)
class TimedTranscript:
    """A transcript with its word and segment times (entries in NeMo's field names, see the module doc)."""

    text: str
    words: list[dict]
    segments: list[dict]


def check_timed_output(decoding_cfg: DecodingConfig, timestamps: bool, output_format: Optional[str]) -> bool:
    """Whether words are to be timed (for ``timestamps`` or for an ``output_format`` file); refuse what cannot be.

    Raises:
        ValueError: ``output_format`` is neither None nor one of :data:`OUTPUT_FORMATS`, or words are to be timed
            with a decoding strategy that is not one of :data:`TIMED_STRATEGIES`.
    """
    if output_format is not None:
        _check_format(output_format)
    timed = timestamps or output_format is not None
    if timed:
        _check_strategy(OmegaConf.merge(OmegaConf.structured(CTCDecodingConfig), decoding_cfg).strategy)
    return timed


def _check_format(output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")


def _check_strategy(strategy: str) -> None:
    if strategy not in TIMED_STRATEGIES:
        raise ValueError(f"timestamps need ctc_decoding.strategy {' / '.join(TIMED_STRATEGIES)}, got {strategy!r}")


def timed_transcripts(model: EncDecCTCModel, log_probs: Sequence[np.ndarray]) -> list[TimedTranscript]:
    """Decode ``log_probs`` (each ``(T_i, V + 1)``) with the model's current decoding and time the words.

    Raises:
        ValueError: the model's decoding strategy is not one of :data:`TIMED_STRATEGIES`.
    """
    decoding = model.decoding
    strategy = decoding.cfg.strategy
    _check_strategy(strategy)
    frame_seconds = frame_samples(model) / model.cfg.sample_rate
    separators = tuple(decoding.segment_seperators or ())
    transcripts = []
    for utterance, hypothesis in zip(log_probs, decode_hypotheses(model, log_probs)):
        if strategy == "pyctcdecode":
            offsets = [
                {"word": word, "start_offset": start, "end_offset": end} for word, (start, end) in hypothesis.timestamp
            ]
        else:
            offsets = _greedy_word_offsets(decoding, break_words_at_pauses(model, utterance))
        words = [
            {
                **offset,
                "start": round(offset["start_offset"] * frame_seconds, 3),
                "end": round(offset["end_offset"] * frame_seconds, 3),
            }
            for offset in offsets
        ]
        transcripts.append(TimedTranscript(hypothesis.text, words, subtitle_segments(words, separators)))
    return transcripts


def _greedy_word_offsets(decoding, log_probs: np.ndarray) -> list[dict]:
    """Words of the best path, each from the first frame of its first token to the end of its last token's run."""
    path = log_probs.argmax(axis=1)
    run_starts = np.flatnonzero(np.diff(path, prepend=-1))
    run_ends = np.append(run_starts[1:], path.size)
    encoded, decoded = [], []
    for start, end in zip(run_starts.tolist(), run_ends.tolist()):
        token_id = int(path[start])
        if token_id == decoding.blank_id:
            continue
        token = decoding.decode_ids_to_tokens([token_id])[0]
        encoded.append({"char": token, "start_offset": start, "end_offset": end})
        decoded.append({"char": decoding.decode_tokens_to_str([token]), "start_offset": start, "end_offset": end})
    if not decoded:
        return []
    words = get_words_offsets(
        decoded,
        encoded,
        decoding.decode_tokens_to_str,
        word_delimiter_char=decoding.word_seperator,
        tokenizer_type=decoding.tokenizer_type,
        supported_punctuation=decoding.supported_punctuation,
    )
    return [
        {"word": w["word"], "start_offset": int(w["start_offset"]), "end_offset": int(w["end_offset"])} for w in words
    ]


def subtitle_segments(words: Sequence[dict], separators: Sequence[str] = (".", "!", "?")) -> list[dict]:
    """Group timed words into segments a subtitle cue can show.

    A segment ends after a word ending in one of ``separators`` (NeMo's ``segment_seperators``), before a pause
    of :data:`SEGMENT_PAUSE_SECONDS`, and before a word that would make it longer than :data:`SEGMENT_MAX_CHARS`
    characters or :data:`SEGMENT_MAX_SECONDS` seconds.

    Args:
        words: word entries with ``word``, ``start_offset``, ``end_offset``, ``start``, ``end``, in time order.
        separators: word endings that close a segment. (Default: NeMo's ``.``, ``!``, ``?``)

    Returns:
        Segment entries ``{"segment", "start_offset", "end_offset", "start", "end"}``.
    """
    segments: list[dict] = []
    current: list[dict] = []
    length = 0
    for word in words:
        if current and (
            length + 1 + len(word["word"]) > SEGMENT_MAX_CHARS
            or word["end"] - current[0]["start"] > SEGMENT_MAX_SECONDS
            or word["start"] - current[-1]["end"] >= SEGMENT_PAUSE_SECONDS
        ):
            segments.append(_segment(current))
            current, length = [], 0
        length += len(word["word"]) + (1 if current else 0)
        current.append(word)
        if word["word"].endswith(tuple(separators)):
            segments.append(_segment(current))
            current, length = [], 0
    if current:
        segments.append(_segment(current))
    return segments


def _segment(words: list[dict]) -> dict:
    return {
        "segment": " ".join(word["word"] for word in words),
        "start_offset": words[0]["start_offset"],
        "end_offset": words[-1]["end_offset"],
        "start": words[0]["start"],
        "end": words[-1]["end"],
    }


def write_timed_file(path: str | os.PathLike, output_format: str, transcript: TimedTranscript, name: str) -> Path:
    """Write ``transcript`` as a subtitle (``srt``, ``vtt``: one cue per segment) or CTM file (one line per word).

    CTM lines are ``<name> 1 <start> <duration> <word>`` with times in seconds; whitespace in ``name`` becomes
    ``_``. The file is written whole or not at all.

    Raises:
        ValueError: ``output_format`` is not one of :data:`OUTPUT_FORMATS`.
    """
    _check_format(output_format)
    if output_format == "ctm":
        name = re.sub(r"\s+", "_", name)
        lines = [f"{name} 1 {w['start']:.2f} {w['end'] - w['start']:.2f} {w['word']}\n" for w in transcript.words]
    else:
        separator = "," if output_format == "srt" else "."
        lines = ["WEBVTT\n\n"] if output_format == "vtt" else []
        for number, segment in enumerate(transcript.segments, start=1):
            cue = (
                f"{_clock(segment['start'], separator)} --> {_clock(segment['end'], separator)}\n"
                f"{segment['segment']}\n\n"
            )
            lines.append(f"{number}\n{cue}" if output_format == "srt" else cue)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return Path(path)


def _clock(seconds: float, separator: str) -> str:
    """``HH:MM:SS<separator>mmm``."""
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"
