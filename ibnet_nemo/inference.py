"""The acoustic layer: restore a CTC model, set its decoding, run it over audio files, decode its output.

:func:`iter_log_probs` runs the model batch by batch and gives every input its CTC log-probabilities or the
:class:`~ibnet_nemo.audio.AudioError` that kept it from having them: a broken file, or a model failure on one input
(the batch is retried one input at a time), never costs the other inputs of its batch their output.
:func:`decode_log_probs` turns log-probabilities into text with NeMo's own decoding
(``model.change_decoding_strategy``, set by :func:`set_decoding`): greedy, or beam search with a word n-gram ARPA
through ``strategy=pyctcdecode`` and ``beam.{beam_size, ngram_lm_model, ngram_lm_alpha, beam_beta}``.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig
from omegaconf import DictConfig, OmegaConf

from ibnet_nemo.audio import AudioError, load_audio
from ibnet_nemo.cli import one_line
from ibnet_nemo.lm.arpa import BOS, EOS, UNK, read_arpa_unigrams

__all__ = [
    "DecodingConfig",
    "check_decoding",
    "decode_log_probs",
    "iter_log_probs",
    "load_model",
    "output_characters",
    "set_decoding",
]

#: A CTC decoding config as NeMo's ``change_decoding_strategy`` takes it (missing keys take NeMo's defaults).
DecodingConfig = Union[CTCDecodingConfig, DictConfig, dict]
#: SentencePiece's word-boundary mark: a piece that starts a word starts with it.
WORD_BOUNDARY = "\u2581"
#: SentencePiece's special pieces (``<unk>``, ``<s>``, ``</s>``, ``<pad>``): they spell no characters.
_SPECIAL_PIECE = re.compile(r"^<[^<>]+>$")


def load_model(model_path: Optional[str | os.PathLike], cuda: Optional[int] = None) -> EncDecCTCModel:
    """Restore a CTC model from a ``.nemo`` file, in eval mode, on the device ``cuda`` selects.

    Character (``EncDecCTCModel``) and sub-word (``EncDecCTCModelBPE``, its subclass) models alike.

    Args:
        model_path: the ``.nemo`` file.
        cuda: GPU index, ``-1`` for CPU, ``None`` for the first GPU if any else CPU. (Default: None)

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
        ValueError: ``model_path`` is None, ``cuda`` names a GPU this machine does not have, the file is not a
            ``.nemo`` archive, or it holds a model that is not a CTC model (or one whose ``_target_`` NeMo refuses).
    """
    if model_path is None:
        raise ValueError("model_path is required (a CTC model's .nemo file)")
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model_path {str(model_path)!r}: no such file")
    if cuda is not None and cuda >= 0 and cuda >= torch.cuda.device_count():
        raise ValueError(f"cuda={cuda}, but this machine has {torch.cuda.device_count()} GPU(s); cuda=-1 runs on CPU")
    if cuda is None:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device("cpu" if cuda < 0 else f"cuda:{cuda}")
    try:
        model = ASRModel.restore_from(str(model_path), map_location=device)
    except tarfile.TarError as error:
        raise ValueError(f"model_path {str(model_path)!r}: not a .nemo archive ({error})") from error
    if not isinstance(model, EncDecCTCModel):
        raise ValueError(f"model_path {str(model_path)!r} holds a {type(model).__name__}, not a CTC model")
    return model.eval()


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
    model: EncDecCTCModel, records: Sequence[dict], batch_size: int, debug: bool = False
) -> Iterator[list[tuple[dict, np.ndarray | AudioError]]]:
    """Run the acoustic model over ``records`` in batches; per batch, each record with its outcome.

    The outcome is the record's CTC log-probabilities, shape ``(T', V + 1)`` (frames past its length dropped),
    or the :class:`AudioError` that kept it from being transcribed. When the model fails on a batch, its
    inputs are retried one at a time so that only the failing one is lost.

    Args:
        model: a CTC model in eval mode.
        records: manifest records with ``audio_filepath``.
        batch_size: inputs per forward pass, at least 1.
        debug: raise the first failure instead of recording it. (Default: False)

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sample_rate = model.cfg.sample_rate
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        outcomes: list[np.ndarray | AudioError | None] = []
        for record in batch:
            try:
                path = record.get("audio_filepath")
                if not isinstance(path, str):
                    raise AudioError("the record has no audio_filepath")
                outcomes.append(load_audio(path, sample_rate))
            except AudioError as error:
                if debug:
                    raise
                outcomes.append(error)
        loaded = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, np.ndarray)]
        for i, log_probs in zip(loaded, _forward_robust([outcomes[i] for i in loaded], model, debug)):
            outcomes[i] = log_probs
        yield list(zip(batch, outcomes))


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
            return [AudioError(f"the model failed on this input ({type(error).__name__}: {one_line(error)})")]
        return [outcome for audio in audios for outcome in _forward_robust([audio], model, debug)]


def _forward(audios: list[np.ndarray], model: EncDecCTCModel) -> list[np.ndarray | AudioError]:
    """One padded forward pass; per input its log-probs ``(T', V + 1)`` or why it has none."""
    lengths = torch.tensor([audio.size for audio in audios])
    signal = torch.zeros(len(audios), int(lengths.max()))
    for row, audio in zip(signal, audios):
        row[: audio.size] = torch.from_numpy(audio)
    with torch.inference_mode():
        log_probs, encoded_lengths, _ = model.forward(
            input_signal=signal.to(model.device), input_signal_length=lengths.to(model.device)
        )
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


def decode_log_probs(model: EncDecCTCModel, log_probs: Sequence[np.ndarray]) -> list[str]:
    """Texts of CTC log-probabilities (each ``(T_i, V + 1)``) with the model's current decoding strategy."""
    if not log_probs:
        return []
    lengths = torch.tensor([lp.shape[0] for lp in log_probs])
    padded = torch.zeros(len(log_probs), int(lengths.max()), log_probs[0].shape[1])
    for row, lp in zip(padded, log_probs):
        row[: lp.shape[0]] = torch.from_numpy(lp)
    hypotheses = model.decoding.ctc_decoder_predictions_tensor(padded, decoder_lengths=lengths)
    return [hypothesis.text for hypothesis in hypotheses]
