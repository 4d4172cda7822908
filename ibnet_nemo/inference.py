"""The acoustic layer: restore a CTC model, set its decoding, run it over audio files, decode its output.

:func:`iter_log_probs` runs the model batch by batch and gives every input its CTC log-probabilities or the
:class:`~ibnet_nemo.audio.AudioError` that kept it from having them: a broken file, or a model failure on one input
(the batch is retried one input at a time), never costs the other inputs of its batch their output. An input
longer than one buffer is run in chunks (:class:`Chunking`, :func:`chunked_log_probs`): read block by block, each
chunk with context on both sides, the kept frames joined into one sequence, in memory set by the buffer.
:func:`decode_log_probs` turns log-probabilities into text with NeMo's own decoding
(``model.change_decoding_strategy``, set by :func:`set_decoding`): greedy, or beam search with a word n-gram ARPA
through ``strategy=pyctcdecode`` and ``beam.{beam_size, ngram_lm_model, ngram_lm_alpha, beam_beta}``.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ibnet_nemo.audio import AudioError, AudioReader
from ibnet_nemo.cli import one_line
from ibnet_nemo.lm.arpa import BOS, EOS, UNK, read_arpa_unigrams
from ibnet_nemo.quantize import apply_quantization, check_quantization

__all__ = [
    "CHUNK_LEN_IN_SECS",
    "TOTAL_BUFFER_IN_SECS",
    "ChunkLayout",
    "Chunking",
    "DecodingConfig",
    "PartialLogProbs",
    "break_words_at_pauses",
    "check_decoding",
    "chunked_log_probs",
    "decode_hypotheses",
    "decode_log_probs",
    "frame_samples",
    "iter_log_probs",
    "load_model",
    "normalize_buffer_features",
    "output_characters",
    "set_decoding",
]

#: Seconds of output kept per buffer of a long input (measured: docs/transcription.md, "Long recordings").
CHUNK_LEN_IN_SECS = 8.0
#: Seconds of audio per buffer: the chunk plus equal context on both sides; longer inputs are chunked.
TOTAL_BUFFER_IN_SECS = 12.0
#: A buffer's feature statistics leave out the middle of every silence at least this long (seconds) ...
SILENCE_MIN_SECONDS = 0.3
#: ... but for this much of it at either end (seconds), as an utterance has short silent edges ...
SILENCE_EDGE_SECONDS = 0.1
#: ... where a frame is silent when its mean log-mel energy is this far (dB) below the buffer's loudest frame.
SILENCE_BELOW_DB = 40.0
#: In decoding, a run of blank frames at least this long (seconds) between two words of a character model is a
#: word boundary (:func:`break_words_at_pauses`).
WORD_BREAK_PAUSE_SECONDS = 0.4

#: A CTC decoding config as NeMo's ``change_decoding_strategy`` takes it (missing keys take NeMo's defaults).
DecodingConfig = Union[CTCDecodingConfig, DictConfig, dict]
#: SentencePiece's word-boundary mark: a piece that starts a word starts with it.
WORD_BOUNDARY = "\u2581"
#: SentencePiece's special pieces (``<unk>``, ``<s>``, ``</s>``, ``<pad>``): they spell no characters.
_SPECIAL_PIECE = re.compile(r"^<[^<>]+>$")


def load_model(
    model_path: Optional[str | os.PathLike], cuda: Optional[int] = None, quantize: Optional[str] = None
) -> EncDecCTCModel:
    """Restore a CTC model from a ``.nemo`` file, in eval mode, on the device ``cuda`` selects.

    Character (``EncDecCTCModel``) and sub-word (``EncDecCTCModelBPE``, its subclass) models alike.

    Args:
        model_path: the ``.nemo`` file.
        cuda: GPU index, ``-1`` for CPU, ``None`` for the first GPU if any else CPU (always the CPU with
            ``quantize``). (Default: None)
        quantize: ``"int8"`` to run int8 on the CPU (:func:`~ibnet_nemo.quantize.quantize_int8`), None for the
            model as saved (fp32). (Default: None)

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
        ValueError: ``model_path`` is None, ``cuda`` names a GPU this machine does not have, ``quantize`` is
            unknown or asked for on a GPU, the file is not a ``.nemo`` archive, or it holds a model that is not a
            CTC model (or one whose ``_target_`` NeMo refuses, or one int8 does not support).
    """
    if model_path is None:
        raise ValueError("model_path is required (a CTC model's .nemo file)")
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model_path {str(model_path)!r}: no such file")
    if cuda is not None and cuda >= 0 and cuda >= torch.cuda.device_count():
        raise ValueError(f"cuda={cuda}, but this machine has {torch.cuda.device_count()} GPU(s); cuda=-1 runs on CPU")
    check_quantization(quantize)
    if quantize is not None and cuda is not None and cuda >= 0:
        raise ValueError(f"quantize={quantize} runs on the CPU: leave cuda unset or set cuda=-1, not cuda={cuda}")
    if quantize is not None:
        device = torch.device("cpu")
    elif cuda is None:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device("cpu" if cuda < 0 else f"cuda:{cuda}")
    try:
        model = ASRModel.restore_from(str(model_path), map_location=device)
    except tarfile.TarError as error:
        raise ValueError(f"model_path {str(model_path)!r}: not a .nemo archive ({error})") from error
    if not isinstance(model, EncDecCTCModel):
        raise ValueError(f"model_path {str(model_path)!r} holds a {type(model).__name__}, not a CTC model")
    return apply_quantization(model.eval(), quantize)


def check_decoding(model: EncDecCTCModel, decoding_cfg: DecodingConfig) -> DictConfig:
    """``decoding_cfg`` merged onto NeMo's CTC decoding defaults, its LM checked against ``model``'s characters.

    With ``strategy=pyctcdecode`` and ``beam.ngram_lm_model`` set, the LM file must exist, and an ARPA's words
    must be spelled with the model's characters (:func:`output_characters`): an upper-case ARPA (LibriSpeech's)
    for a lower-case model is refused with the command that converts it. For a sub-word model pyctcdecode
    finds the words at the pieces that start with ``▁``.

    Raises:
        ValueError: the LM file is missing, or none of its words can be spelled by the model.
    """
    cfg = OmegaConf.merge(OmegaConf.structured(CTCDecodingConfig), decoding_cfg)
    lm_path = cfg.beam.ngram_lm_model if cfg.strategy == "pyctcdecode" else None
    if lm_path is not None:
        _check_lm(Path(lm_path), output_characters(model))
    return cfg


def output_characters(model: EncDecCTCModel) -> set[str]:
    """The characters ``model`` writes: a character model's labels (the space included); for a sub-word model
    with a SentencePiece tokenizer, the characters of its pieces with ``▁`` read as the space and the special
    pieces (``<unk>``, ...) left out."""
    if getattr(model, "tokenizer", None) is None:
        return set(model.decoder.vocabulary)
    pieces = (piece for piece in model.decoder.vocabulary if not _SPECIAL_PIECE.match(piece))
    return {" " if char == WORD_BOUNDARY else char for piece in pieces for char in piece}


def set_decoding(model: EncDecCTCModel, decoding_cfg: DecodingConfig) -> None:
    """Switch ``model`` to ``decoding_cfg`` through NeMo's ``change_decoding_strategy``, checked first.

    See :func:`check_decoding` for the LM checks.

    Raises:
        ValueError: the LM file is missing, or none of its words can be spelled by the model.
    """
    model.change_decoding_strategy(check_decoding(model, decoding_cfg), verbose=False)


def _check_lm(lm_path: Path, characters: set[str]) -> None:
    if not lm_path.is_file():
        raise ValueError(f"ngram_lm_model {str(lm_path)!r}: no such file")
    if lm_path.suffix != ".arpa":
        return  # a KenLM binary: its words cannot be listed
    words = read_arpa_unigrams(lm_path) - {BOS, EOS, UNK, BOS.upper(), EOS.upper(), UNK.upper()}
    if words and not any(set(word) <= characters for word in words):
        raise ValueError(
            f"ngram_lm_model {str(lm_path)!r}: none of its {len(words)} words is spelled with the model's "
            f"characters (e.g. {sorted(words)[0]!r}); for an upper-case ARPA such as LibriSpeech's, convert it "
            f"first: python -m ibnet_nemo.lm.arpa lowercase {lm_path} {lm_path.stem}_lower.arpa"
        )


def iter_log_probs(
    model: EncDecCTCModel,
    records: Sequence[dict],
    batch_size: int,
    debug: bool = False,
    chunking: Optional[Chunking] = None,
) -> Iterator[list[tuple[dict, np.ndarray | AudioError]]]:
    """Run the acoustic model over ``records`` in batches; per batch, each record with its outcome.

    The outcome is the record's CTC log-probabilities, shape ``(T', V + 1)`` (frames past its length dropped),
    or the :class:`AudioError` that kept it from being transcribed. When the model fails on a batch, its
    inputs are retried one at a time so that only the failing one is lost. An input longer than
    ``chunking.total_buffer_in_secs`` is read in blocks and run in chunks (:func:`chunked_log_probs`); when it is
    damaged part-way, its outcome is a :class:`PartialLogProbs` error that carries the log-probabilities up to
    the damage.

    Args:
        model: a CTC model in eval mode.
        records: manifest records with ``audio_filepath``.
        batch_size: inputs (or buffers of a long input) per forward pass, at least 1.
        debug: raise the first failure instead of recording it. (Default: False)
        chunking: how long inputs are chunked. (Default: ``Chunking()``)

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunking = chunking or Chunking()
    sample_rate = model.cfg.sample_rate
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        outcomes: list[np.ndarray | AudioError] = []
        short: list[int] = []  # inputs read whole, run together below
        for record in batch:
            try:
                path = record.get("audio_filepath")
                if not isinstance(path, str):
                    raise AudioError("the record has no audio_filepath")
                with AudioReader(path, sample_rate) as reader:
                    if reader.duration > chunking.total_buffer_in_secs:
                        outcomes.append(_chunked_robust(model, reader, chunking, batch_size, debug))
                    else:
                        audio = reader.read()
                        short.append(len(outcomes))
                        outcomes.append(audio)
            except AudioError as error:
                if debug:
                    raise
                outcomes.append(error)
        for i, log_probs in zip(short, _forward_robust([outcomes[i] for i in short], model, debug)):
            outcomes[i] = log_probs
        yield list(zip(batch, outcomes))


def _model_failure(error: Exception) -> AudioError:
    return AudioError(f"the model failed on this input ({type(error).__name__}: {one_line(error)})")


def _forward_robust(audios: list[np.ndarray], model: EncDecCTCModel, debug: bool) -> list[np.ndarray | AudioError]:
    """:func:`_forward`, retrying one input at a time when the batch fails."""
    if not audios:
        return []
    try:
        return _forward(audios, model)
    except Exception as error:  # noqa: BLE001  (any model failure is recorded per input, not fatal)
        if debug:
            raise
        if len(audios) == 1:
            return [_model_failure(error)]
        return [outcome for audio in audios for outcome in _forward_robust([audio], model, debug)]


def _forward(audios: list[np.ndarray], model: EncDecCTCModel, buffers: bool = False) -> list[np.ndarray | AudioError]:
    """One padded forward pass; per input its log-probs ``(T', V + 1)`` or why it has none.

    ``buffers``: the inputs are buffers of a long recording, whose features are normalized as
    :func:`normalize_buffer_features` says where the model normalizes per feature.
    """
    lengths = torch.tensor([audio.size for audio in audios])
    signal = torch.zeros(len(audios), int(lengths.max()))
    for row, audio in zip(signal, audios):
        row[: audio.size] = torch.from_numpy(audio)
    signal, lengths = signal.to(model.device), lengths.to(model.device)
    featurizer = model.preprocessor.featurizer
    with torch.inference_mode():
        if buffers and featurizer.normalize == "per_feature" and featurizer.log:
            featurizer.normalize = None  # the preprocessor's features as they are before normalization
            try:
                features, feature_lengths = model.preprocessor(input_signal=signal, length=lengths)
            finally:
                featurizer.normalize = "per_feature"
            features = normalize_buffer_features(features, feature_lengths, model)
            encoded, encoded_lengths = model.encoder(audio_signal=features, length=feature_lengths)
            log_probs = model.decoder(encoder_output=encoded)
        else:
            log_probs, encoded_lengths, _ = model.forward(input_signal=signal, input_signal_length=lengths)
    outcomes = []
    for audio, utterance_log_probs, length in zip(audios, log_probs.float().cpu().numpy(), encoded_lengths.tolist()):
        if length == 0:
            seconds = audio.size / model.cfg.sample_rate
            outcomes.append(AudioError(f"too short to produce an output frame ({seconds:.3f} s)"))
        elif not np.isfinite(utterance_log_probs[:length]).all():
            outcomes.append(AudioError("the model's output for this input is not finite"))
        else:
            outcomes.append(utterance_log_probs[:length])
    return outcomes


# ---------------------------------------------------------------- long inputs: chunked log-probabilities


@dataclass(frozen=True)
class Chunking:
    """How an input longer than one buffer is transcribed: chunk by chunk, each run with context on both sides.

    Each buffer (a chunk with ``(total_buffer_in_secs - chunk_len_in_secs) / 2`` seconds of context on either
    side) goes through the whole model on its own, its features normalized over the buffer as training
    normalized them over an utterance; only the output frames of the chunk are kept. Both lengths are rounded
    to whole output frames (the preprocessor's hop times the encoder's subsampling factor), so that the kept
    frames join into exactly the frames of the whole input.

    Args:
        chunk_len_in_secs: seconds of output kept from each buffer. (Default: :data:`CHUNK_LEN_IN_SECS`)
        total_buffer_in_secs: seconds of audio run per buffer, at least ``chunk_len_in_secs``; inputs longer
            than this are chunked, shorter ones run whole. (Default: :data:`TOTAL_BUFFER_IN_SECS`)

    Raises:
        ValueError: a length is not positive, or the buffer is shorter than the chunk.
    """

    chunk_len_in_secs: float = CHUNK_LEN_IN_SECS
    total_buffer_in_secs: float = TOTAL_BUFFER_IN_SECS

    def __post_init__(self):
        if not self.chunk_len_in_secs > 0:
            raise ValueError(f"chunk_len_in_secs must be positive, got {self.chunk_len_in_secs}")
        if not self.total_buffer_in_secs >= self.chunk_len_in_secs:
            raise ValueError(
                f"total_buffer_in_secs must be >= chunk_len_in_secs ({self.chunk_len_in_secs}), "
                f"got {self.total_buffer_in_secs}"
            )


def frame_samples(model: EncDecCTCModel) -> int:
    """Audio samples per output frame of ``model``: its preprocessor's hop times its encoder's subsampling factor."""
    return int(model.preprocessor.featurizer.hop_length) * int(model.encoder.subsampling_factor)


@dataclass(frozen=True)
class ChunkLayout:
    """A :class:`Chunking` in samples of one model, each length a whole number of output frames.

    Args:
        frame_samples: samples per output frame (the preprocessor's hop times the encoder's subsampling).
        chunk_frames: output frames kept per buffer.
        context_frames: output frames of context on each side of a chunk.
    """

    frame_samples: int
    chunk_frames: int
    context_frames: int

    @classmethod
    def of(cls, model: EncDecCTCModel, chunking: Chunking) -> ChunkLayout:
        """The layout of ``chunking`` for ``model`` (at least one frame per chunk)."""
        samples = frame_samples(model)
        frame_seconds = samples / model.cfg.sample_rate
        context_seconds = (chunking.total_buffer_in_secs - chunking.chunk_len_in_secs) / 2
        return cls(
            samples,
            chunk_frames=max(1, round(chunking.chunk_len_in_secs / frame_seconds)),
            context_frames=round(context_seconds / frame_seconds),
        )

    @property
    def chunk_samples(self) -> int:
        return self.chunk_frames * self.frame_samples

    @property
    def context_samples(self) -> int:
        return self.context_frames * self.frame_samples

    @property
    def buffer_samples(self) -> int:
        return self.chunk_samples + 2 * self.context_samples


class PartialLogProbs(AudioError):
    """A long input damaged part-way: the error says where; ``log_probs`` ``(T', V + 1)`` cover the audio before."""

    def __init__(self, message: str, log_probs: np.ndarray):
        super().__init__(message)
        self.log_probs = log_probs


def chunked_log_probs(
    model: EncDecCTCModel, reader: AudioReader, chunking: Chunking, batch_size: int, progress: bool = True
) -> np.ndarray:
    """CTC log-probabilities of a long input, computed buffer by buffer from its blocks (:class:`Chunking`).

    Memory is set by the buffers of one batch, not by the input: the audio is read block by block and only
    the samples the next buffers need are held. The result has as many frames as a forward pass over the
    whole input would give.

    Args:
        model: a CTC model in eval mode.
        reader: the input, open.
        chunking: chunk and buffer lengths.
        batch_size: buffers per forward pass, at least 1.
        progress: show a bar of the audio seconds done. (Default: True)

    Returns:
        Log-probabilities, shape ``(T', V + 1)``.

    Raises:
        PartialLogProbs: the input is damaged part-way (:meth:`AudioReader.blocks`); it holds the
            log-probabilities of the audio before the damage.
        AudioError: the input is damaged before its first output frame, or the model's output is not finite.
    """
    layout = ChunkLayout.of(model, chunking)
    damage: list[AudioError] = []

    def blocks() -> Iterator[np.ndarray]:
        try:
            yield from reader.blocks()
        except AudioError as error:
            damage.append(error)

    frame_seconds = layout.frame_samples / model.cfg.sample_rate
    # One array for the whole output, sized from the duration (doubled should that fall short): many small
    # long-lived pieces among the forward passes' large temporaries would fragment the heap.
    merged: Optional[np.ndarray] = None
    filled = 0
    with tqdm(
        total=round(reader.duration, 1), unit="s", desc="Audio seconds", leave=False, disable=not progress
    ) as bar:
        for batch in _batches(_buffers(blocks(), layout), batch_size):
            outcomes = _forward([buffer for buffer, _, _ in batch], model, buffers=True)
            for (_, first, count), outcome in zip(batch, outcomes):
                if isinstance(outcome, AudioError):
                    raise outcome
                kept = outcome[first : None if count is None else first + count]
                if merged is None:
                    merged = np.empty((round(reader.duration / frame_seconds) + 2, kept.shape[1]), dtype=np.float32)
                while filled + kept.shape[0] > merged.shape[0]:
                    merged = np.concatenate([merged, np.empty_like(merged)])
                merged[filled : filled + kept.shape[0]] = kept
                filled += kept.shape[0]
                bar.update(round(kept.shape[0] * frame_seconds, 1))
    log_probs = merged[:filled] if filled else None
    if damage:
        if log_probs is None:
            raise damage[0]
        seconds = log_probs.shape[0] * frame_seconds
        raise PartialLogProbs(f"{damage[0]}; transcribed up to {seconds:.2f} s", log_probs)
    return log_probs


def _chunked_robust(
    model: EncDecCTCModel, reader: AudioReader, chunking: Chunking, batch_size: int, debug: bool
) -> np.ndarray | AudioError:
    """:func:`chunked_log_probs`, a model failure turned into the input's error unless ``debug``."""
    try:
        return chunked_log_probs(model, reader, chunking, batch_size)
    except AudioError:
        raise
    except Exception as error:  # noqa: BLE001  (a model failure costs this input only)
        if debug:
            raise
        return _model_failure(error)


def normalize_buffer_features(features: torch.Tensor, lengths: torch.Tensor, model: EncDecCTCModel) -> torch.Tensor:
    """Per-feature normalization of buffers' log-mel features, ``(B, D, T)``, as training normalized utterances.

    The arithmetic is that of NeMo's ``per_feature`` normalization (mean, unbiased standard deviation plus
    1e-5, frames past each length set to 0), but the statistics leave out the middle of each long silence
    (:data:`SILENCE_MIN_SECONDS`, :data:`SILENCE_EDGE_SECONDS`, :data:`SILENCE_BELOW_DB`): a training utterance
    holds speech with short silent edges, and a buffer of a recording whose speech is broken by long pauses
    would otherwise be normalized with statistics no utterance had. A buffer with no long silence is normalized
    exactly as NeMo normalizes it.

    Args:
        features: log-mel features as the model's preprocessor computes them without normalization, ``(B, D, T)``.
        lengths: valid frames per buffer, ``(B,)``.
        model: the model, for its sample rate and hop.

    Returns:
        Normalized features, ``(B, D, T)``, 0 past each length.
    """
    frames_per_second = model.cfg.sample_rate / model.preprocessor.featurizer.hop_length
    min_frames = round(SILENCE_MIN_SECONDS * frames_per_second)
    edge_frames = round(SILENCE_EDGE_SECONDS * frames_per_second)
    below = SILENCE_BELOW_DB / 10 * np.log(10)  # dB -> natural log of power, the features' unit
    valid = torch.arange(features.shape[2], device=features.device)[None] < lengths[:, None]  # (B, T)
    counted = valid.clone()
    energy = features.mean(dim=1).cpu().numpy()  # (B, T)
    for row, (frame_energy, length) in enumerate(zip(energy, lengths.tolist())):
        quiet = frame_energy[:length] < frame_energy[:length].max() - below
        edges = np.flatnonzero(np.diff(quiet.astype(np.int8), prepend=0, append=0))
        for start, end in zip(edges[::2].tolist(), edges[1::2].tolist()):
            if end - start >= min_frames:
                counted[row, start + edge_frames : end - edge_frames] = False
    weights = counted[:, None].to(features.dtype)  # (B, 1, T)
    count = weights.sum(dim=2)
    mean = (features * weights).sum(dim=2) / count
    std = torch.sqrt((((features - mean[:, :, None]) * weights) ** 2).sum(dim=2) / (count - 1)).nan_to_num(0.0) + 1e-5
    return ((features - mean[:, :, None]) / std[:, :, None]).masked_fill(~valid[:, None], 0.0)


def _buffers(blocks: Iterator[np.ndarray], layout: ChunkLayout) -> Iterator[tuple[np.ndarray, int, Optional[int]]]:
    """Split a stream of sample blocks into buffers: per chunk, ``(buffer, first kept frame, kept frames)``.

    A chunk starting at sample ``c`` runs in the buffer ``[c - context, c + chunk + context)``, clipped to the
    input and, at either end of the input, extended inwards to the full buffer length where the input is long
    enough. Buffers start on whole output frames, so the buffer's frame ``i`` is the input's frame
    ``start / frame_samples + i``. The last chunk keeps every frame to the end of its buffer (``None``), which
    includes the frame a forward pass adds past the last whole frame.
    """
    fs, chunk, context, size = layout.frame_samples, layout.chunk_samples, layout.context_samples, layout.buffer_samples
    window, window_start = np.zeros(0, dtype=np.float32), 0  # the samples held, and the input index of the first
    ended = False
    chunk_start = 0
    while True:
        # Hold this chunk's buffer and a sample past it (to know whether the input goes on), or all that is left.
        nominal_end = max(chunk_start + chunk + context, size)
        new_blocks = []
        held_end = window_start + window.size
        while not ended and held_end <= nominal_end:
            block = next(blocks, None)
            ended = block is None
            if not ended:
                new_blocks.append(block)
                held_end += block.size
        if new_blocks:
            window = np.concatenate([window, *new_blocks])
        if held_end == 0:
            return
        last = ended and chunk_start + chunk >= held_end
        buffer_end = min(nominal_end, held_end)
        buffer_start = max(0, min(chunk_start - context, buffer_end - size)) // fs * fs
        yield (
            window[buffer_start - window_start : buffer_end - window_start],
            (chunk_start - buffer_start) // fs,
            None if last else layout.chunk_frames,
        )
        if last:
            return
        chunk_start += chunk
        keep_from = max(0, min(chunk_start - context, held_end - size)) // fs * fs  # the next buffer's earliest start
        window, window_start = window[keep_from - window_start :], keep_from


def _batches(items: Iterator, batch_size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- decoding


def break_words_at_pauses(model: EncDecCTCModel, log_probs: np.ndarray) -> np.ndarray:
    """``log_probs`` ``(T, V + 1)`` in which each long run of blank frames between two non-space tokens is a word
    boundary (:data:`WORD_BREAK_PAUSE_SECONDS`), as a copy. Only for vocabularies with a space token (character
    models); sub-word models mark word starts in their tokens.

    A model trained on single utterances never emits a space at their edges, so the words on either side of a
    pause between two sentences would join. In the run's middle frame, blank and space exchange their
    log-probabilities; the greedy path then holds a space there, and beam search sees one.
    """
    vocabulary = list(model.decoder.vocabulary)
    if " " not in vocabulary:
        return log_probs
    space, blank = vocabulary.index(" "), len(vocabulary)
    min_frames = max(1, round(WORD_BREAK_PAUSE_SECONDS * model.cfg.sample_rate / frame_samples(model)))
    edited = log_probs.copy()
    path = log_probs.argmax(axis=1)
    run_starts = np.flatnonzero(np.diff(path, prepend=-1))
    run_ends = np.append(run_starts[1:], path.size)
    for start, end in zip(run_starts.tolist(), run_ends.tolist()):
        if (
            path[start] == blank
            and end - start >= min_frames
            and start > 0
            and end < path.size
            and path[start - 1] != space
            and path[end] != space
        ):
            middle = (start + end) // 2
            edited[middle, [space, blank]] = edited[middle, [blank, space]]
    return edited


def decode_hypotheses(model: EncDecCTCModel, log_probs: Sequence[np.ndarray]) -> list[Hypothesis]:
    """NeMo's best hypothesis for each of ``log_probs`` (each ``(T_i, V + 1)``) with the model's current decoding,
    long pauses made word boundaries first (:func:`break_words_at_pauses`).

    Inputs are decoded one at a time, so that a long input never pads a batch of short ones to its length. With
    ``strategy=pyctcdecode``, a hypothesis' ``timestamp`` holds pyctcdecode's word frames,
    ``[(word, (first frame, last frame + 1)), ...]``.
    """
    hypotheses = []
    for utterance in log_probs:
        (hypothesis,) = model.decoding.ctc_decoder_predictions_tensor(
            torch.from_numpy(break_words_at_pauses(model, utterance))[None],
            decoder_lengths=torch.tensor([utterance.shape[0]]),
            return_hypotheses=True,
        )
        hypotheses.append(hypothesis[0] if isinstance(hypothesis, list) else hypothesis)  # an n-best list: its best
    return hypotheses


def decode_log_probs(model: EncDecCTCModel, log_probs: Sequence[np.ndarray]) -> list[str]:
    """Texts of CTC log-probabilities (each ``(T_i, V + 1)``) with the model's current decoding strategy."""
    return [hypothesis.text for hypothesis in decode_hypotheses(model, log_probs)]
