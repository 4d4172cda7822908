"""Batch transcription with a NeMo CTC model that survives broken inputs and says what went wrong.

Every input gets exactly one output record: the input's fields plus ``pred_text``, or plus ``error`` (a one-line
reason: file missing, empty, not audio, truncated, non-finite samples, too short to produce a frame, ...). A
broken file never costs the other files of its batch their transcripts. Audio in other forms is converted:
channels are averaged to mono, any sample rate is resampled to the model's, and anything libsndfile reads (int
or float WAV, FLAC, OGG, ...) is accepted.

Decoding is NeMo's own (``model.change_decoding_strategy``): greedy by default, or beam search with a word
n-gram ARPA through ``strategy=pyctcdecode`` and ``beam.{beam_size, ngram_lm_model, ngram_lm_alpha, beam_beta}``.

Public API (used by ``examples/transcribe_speech.py``, ``examples/speech_to_text_eval.py`` and the LM grid
search): :class:`ModelOptions`, :class:`TranscriptionConfig`, :func:`run_transcription`, :func:`load_model`,
:func:`input_records`, :func:`load_audio`, :func:`set_decoding`, :func:`iter_log_probs`, :func:`decode_log_probs`,
:func:`transcribe`, :class:`TranscriptionSummary`, :class:`AudioError`.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import librosa
import numpy as np
import soundfile as sf
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.lm.arpa import BOS, EOS, UNK, read_arpa_unigrams

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "ModelOptions",
    "TranscriptionConfig",
    "TranscriptionSummary",
    "decode_log_probs",
    "input_records",
    "iter_log_probs",
    "load_audio",
    "load_model",
    "run_script",
    "run_transcription",
    "set_decoding",
    "transcribe",
]

#: File name endings collected from ``audio_dir`` (other files in the folder are not inputs).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Fields a transcription writes; an input record's own copies (from an earlier run) are replaced.
_RESULT_KEYS = ("pred_text", "error")
# RIFF declares an unknown data length (a stream written before its end was known) with one of these.
_UNKNOWN_RIFF_SIZES = (0, 0xFFFFFFFF)


class AudioError(ValueError):
    """An input that cannot be transcribed; ``str(error)`` is the one-line reason written to its record."""


@dataclass
class ModelOptions:
    """Options the transcription and evaluation scripts share, with NeMo's key names."""

    model_path: Optional[str] = None  # a CTC model's .nemo file (IBNet or any NeMo CTC model)
    batch_size: int = 8
    cuda: Optional[int] = None  # GPU index; -1 for CPU; null: the first GPU when there is one, else CPU
    debug: bool = False  # let the first failure raise with its traceback instead of recording it
    ctc_decoding: CTCDecodingConfig = field(default_factory=CTCDecodingConfig)


@dataclass
class TranscriptionConfig(ModelOptions):
    """Options of ``examples/transcribe_speech.py``, with NeMo's key names. Give exactly one input."""

    audio_dir: Optional[str] = None  # every *.wav/*.flac/*.ogg/*.mp3 directly inside this folder
    dataset_manifest: Optional[str] = None  # a NeMo manifest; relative audio paths are taken from its folder
    audio_filepath: Optional[str] = None  # one audio file
    output_filename: str = "transcriptions.json"  # output manifest: one record per input


@dataclass
class TranscriptionSummary:
    """What a transcription run did."""

    output_path: Path
    transcribed: int
    failed: int

    def __str__(self) -> str:
        return (
            f"Transcribed {self.transcribed} of {self.transcribed + self.failed} inputs, {self.failed} failed"
            f"{' (see their error field)' if self.failed else ''}. Output: {self.output_path.resolve()}"
        )


def load_model(model_path: Optional[str | os.PathLike], cuda: Optional[int] = None) -> EncDecCTCModel:
    """Restore a CTC model from a ``.nemo`` file, in eval mode, on the device ``cuda`` selects.

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


def input_records(
    audio_dir: Optional[str | os.PathLike] = None,
    dataset_manifest: Optional[str | os.PathLike] = None,
    audio_filepath: Optional[str | os.PathLike] = None,
) -> list[dict]:
    """The inputs as manifest records (dicts with ``audio_filepath``); exactly one source must be given.

    ``audio_dir`` gives its files ending in :data:`AUDIO_EXTENSIONS`, sorted by name. ``dataset_manifest`` gives
    its records unchanged, except that a relative ``audio_filepath`` that exists beside the manifest is made to
    point there (NeMo's rule).

    Raises:
        ValueError: not exactly one source given, the folder or manifest does not exist, a manifest line is not
            a JSON object, or the source holds no inputs.
    """
    given = {name: value for name, value in (("audio_dir", audio_dir), ("dataset_manifest", dataset_manifest),
                                             ("audio_filepath", audio_filepath)) if value is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of audio_dir, dataset_manifest, audio_filepath; got {sorted(given)}")
    if audio_filepath is not None:
        return [{"audio_filepath": str(audio_filepath)}]
    if audio_dir is not None:
        folder = Path(audio_dir)
        if not folder.is_dir():
            raise ValueError(f"audio_dir {str(folder)!r} is not a folder")
        paths = sorted(p for p in folder.iterdir() if p.name.lower().endswith(AUDIO_EXTENSIONS))
        if not paths:
            raise ValueError(f"audio_dir {str(folder)!r} holds no {'/'.join(AUDIO_EXTENSIONS)} files")
        return [{"audio_filepath": str(p)} for p in paths]
    manifest = Path(dataset_manifest)
    if not manifest.is_file():
        raise ValueError(f"dataset_manifest {str(manifest)!r}: no such file")
    records = list(read_manifest(manifest))
    if not records:
        raise ValueError(f"dataset_manifest {str(manifest)!r} has no records")
    for record in records:
        path = record.get("audio_filepath")
        if isinstance(path, str) and not Path(path).is_absolute() and (manifest.parent / path).exists():
            record["audio_filepath"] = str(manifest.parent / path)
    return records


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 samples at ``sample_rate``.

    Channels are averaged; other sample rates are resampled (soxr, via librosa).

    Returns:
        Samples, shape ``(T,)``.

    Raises:
        AudioError: the file is missing, empty, not audio, truncated or corrupt, holds no samples, or holds
            NaN/Inf samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError("file not found")
    if not path.is_file():
        raise AudioError("not a regular file")
    if path.stat().st_size == 0:
        raise AudioError("file is empty (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            if f.format == "WAV":
                _check_wav_length(path)
            file_rate = f.samplerate
            try:
                audio = f.read(dtype="float32", always_2d=True)
            except sf.LibsndfileError as error:
                raise AudioError(f"audio data is truncated or corrupt ({error.error_string})") from None
    except sf.LibsndfileError as error:
        raise AudioError(f"not an audio file libsndfile can read ({error.error_string})") from None
    if audio.shape[0] == 0:
        raise AudioError("no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError("non-finite samples (NaN or Inf)")
    audio = audio.mean(axis=1)
    if file_rate != sample_rate:
        audio = librosa.resample(audio, orig_sr=file_rate, target_sr=sample_rate).astype(np.float32)
    return audio


def _check_wav_length(path: Path) -> None:
    """Raise :class:`AudioError` when a RIFF/WAVE file holds fewer data bytes than its header declares.

    libsndfile reads a truncated WAV without complaint (it shortens the length to what is there), so the data
    chunk's declared size is compared with the bytes that follow it.
    """
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        file_size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            chunk_id, declared = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                present = file_size - f.tell()
                if declared > present and declared not in _UNKNOWN_RIFF_SIZES:
                    raise AudioError(f"truncated: the header declares {declared} data bytes, the file holds {present}")
                return
            f.seek(declared + declared % 2, os.SEEK_CUR)


def set_decoding(model: EncDecCTCModel, decoding_cfg: CTCDecodingConfig | DictConfig | dict) -> None:
    """Switch ``model`` to ``decoding_cfg`` through NeMo's ``change_decoding_strategy``, checking the LM first.

    With ``strategy=pyctcdecode`` and ``beam.ngram_lm_model`` set, the LM file must exist, and an ARPA's words
    must be spelled with the model's characters: an upper-case ARPA (LibriSpeech's) for a lower-case model is
    refused with the command that converts it.

    Raises:
        ValueError: the LM file is missing, or none of its words can be spelled by the model.
    """
    cfg = OmegaConf.merge(OmegaConf.structured(CTCDecodingConfig), decoding_cfg)
    lm_path = cfg.beam.ngram_lm_model if cfg.strategy == "pyctcdecode" else None
    if lm_path is not None:
        _check_lm(Path(lm_path), set(model.decoder.vocabulary))
    model.change_decoding_strategy(cfg, verbose=False)


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
            return [AudioError(f"the model failed on this input ({type(error).__name__}: {_one_line(error)})")]
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


def transcribe(
    model: EncDecCTCModel,
    records: Sequence[dict],
    output_path: str | os.PathLike,
    batch_size: int,
    debug: bool = False,
) -> TranscriptionSummary:
    """Transcribe ``records`` with the model's current decoding strategy into the manifest ``output_path``.

    Each output record is its input record plus ``pred_text`` or ``error`` (replacing any the input had, e.g.
    when an earlier output manifest is transcribed again), in input order. Records are
    appended batch by batch to ``<output_path>.partial``, which is renamed to ``output_path`` when all are
    written: an interrupted run leaves only the ``.partial`` file (with every finished batch in it), never a
    file under the final name that looks complete.

    Args:
        model: a CTC model in eval mode.
        records: manifest records with ``audio_filepath`` (see :func:`input_records`).
        output_path: the manifest to write.
        batch_size: inputs per forward pass, at least 1.
        debug: raise the first failure with its traceback instead of recording it. (Default: False)
    """
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = output_path.with_name(output_path.name + ".partial")
    transcribed = failed = 0
    with open(partial_path, "w", encoding="utf-8") as out, tqdm(total=len(records), desc="Transcribing") as bar:
        for batch in iter_log_probs(model, records, batch_size, debug=debug):
            good = [outcome for _, outcome in batch if isinstance(outcome, np.ndarray)]
            texts = iter(decode_log_probs(model, good))
            for record, outcome in batch:
                result = {key: value for key, value in record.items() if key not in _RESULT_KEYS}
                if isinstance(outcome, np.ndarray):
                    result["pred_text"] = next(texts)
                    transcribed += 1
                else:
                    result["error"] = str(outcome)
                    failed += 1
                out.write(json.dumps(result, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(batch))
    os.replace(partial_path, output_path)
    return TranscriptionSummary(output_path=output_path, transcribed=transcribed, failed=failed)


def run_transcription(cfg: TranscriptionConfig | DictConfig) -> TranscriptionSummary:
    """Everything ``examples/transcribe_speech.py`` does: load the model, set decoding, transcribe the inputs.

    Raises:
        FileNotFoundError, ValueError: a problem with the options (model, inputs, LM), before any transcription.
    """
    records = input_records(cfg.audio_dir, cfg.dataset_manifest, cfg.audio_filepath)
    model = load_model(cfg.model_path, cfg.cuda)
    set_decoding(model, cfg.ctc_decoding)
    return transcribe(model, records, cfg.output_filename, cfg.batch_size, debug=cfg.debug)


def run_script(main: Callable[[], int], debug: bool) -> int:
    """Run a script's ``main`` and turn a problem with its options into one ``error:`` line and exit status 2.

    ``FileNotFoundError`` and ``ValueError`` (bad model path, inputs, LM, manifest) are printed without a
    traceback unless ``debug`` is set; anything else propagates as the bug it is.
    """
    try:
        return main()
    except (FileNotFoundError, ValueError) as error:
        if debug:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
