"""Batch transcription with a NeMo CTC model that survives broken inputs and says what went wrong.

Every input gets exactly one output record: the input's fields plus ``pred_text``, or plus ``error`` (a one-line
reason: file missing, empty, not audio, truncated, non-finite samples, too short to produce a frame, ...). A
broken file never costs the other files of its batch their transcripts; a long recording damaged part-way keeps
the transcript of the audio before the damage beside its ``error``. Audio in other forms is converted
(:class:`~ibnet_nemo.audio.AudioReader`); the model runs and decodes through :mod:`ibnet_nemo.inference`, long
inputs in chunks (:class:`~ibnet_nemo.inference.Chunking`). With timestamps, records get NeMo's ``word`` and
``segment`` lists and, on request, a subtitle or CTM file each (:mod:`ibnet_nemo.timestamps`).

Public API (used by ``examples/transcribe_speech.py`` and the evaluation layer, :mod:`ibnet_nemo.evaluate`):
:class:`ModelOptions`, :class:`TranscriptionConfig`, :func:`run_transcription`, :func:`input_records`,
:func:`output_record`, :func:`transcribe`, :class:`TranscriptionSummary`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from nemo.collections.asr.models import EncDecCTCModel
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ibnet_nemo.audio import AudioError
from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.inference import (
    CHUNK_LEN_IN_SECS,
    TOTAL_BUFFER_IN_SECS,
    Chunking,
    PartialLogProbs,
    decode_log_probs,
    iter_log_probs,
    load_model,
    set_decoding,
)
from ibnet_nemo.timestamps import OUTPUT_FORMATS, check_timed_output, timed_transcripts, write_timed_file

__all__ = [
    "AUDIO_EXTENSIONS",
    "ModelOptions",
    "TranscriptionConfig",
    "TranscriptionSummary",
    "input_records",
    "output_record",
    "run_transcription",
    "transcribe",
]

#: File name endings collected from ``audio_dir`` (other files in the folder are not inputs).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Fields a transcription writes; an input record's own copies (from an earlier run) are replaced.
_RESULT_KEYS = ("pred_text", "error", "word", "segment", *(f"{name}_filepath" for name in OUTPUT_FORMATS))


@dataclass
class ModelOptions:
    """Options the transcription and evaluation scripts share, with NeMo's key names."""

    model_path: Optional[str] = None  # a CTC model's .nemo file (IBNet or any NeMo CTC model)
    batch_size: int = 8
    cuda: Optional[int] = None  # GPU index; -1 for CPU; null: the first GPU when there is one, else CPU
    quantize: Optional[str] = None  # int8: run int8 on the CPU (quantized at load time); null: as saved (fp32)
    debug: bool = False  # let the first failure raise with its traceback instead of recording it
    ctc_decoding: CTCDecodingConfig = field(default_factory=CTCDecodingConfig)
    # Inputs longer than total_buffer_in_secs run in chunks of chunk_len_in_secs, each with equal context on both
    # sides (docs/transcription.md, "Long recordings")
    chunk_len_in_secs: float = CHUNK_LEN_IN_SECS
    total_buffer_in_secs: float = TOTAL_BUFFER_IN_SECS


@dataclass
class TranscriptionConfig(ModelOptions):
    """Options of ``examples/transcribe_speech.py``, with NeMo's key names. Give exactly one input."""

    audio_dir: Optional[str] = None  # every *.wav/*.flac/*.ogg/*.mp3 directly inside this folder
    dataset_manifest: Optional[str] = None  # a NeMo manifest; relative audio paths are taken from its folder
    audio_filepath: Optional[str] = None  # one audio file
    output_filename: str = "transcriptions.json"  # output manifest: one record per input
    timestamps: bool = False  # add NeMo's `word` and `segment` lists (text, start and end in seconds) to each record
    output_format: Optional[str] = None  # srt, vtt or ctm: also write one such file per input beside the output


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
    given = {
        name: value
        for name, value in (
            ("audio_dir", audio_dir),
            ("dataset_manifest", dataset_manifest),
            ("audio_filepath", audio_filepath),
        )
        if value is not None
    }
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


def output_record(record: dict, pred_text: Optional[str], error: str = "", fields: Optional[dict] = None) -> dict:
    """The output record of an input: ``record`` with ``pred_text`` (unless None), ``error`` (unless empty) and
    ``fields`` (e.g. timestamps).

    The results ``record`` held (an earlier output transcribed again) are dropped first.
    """
    result = {key: value for key, value in record.items() if key not in _RESULT_KEYS}
    if pred_text is not None:
        result["pred_text"] = pred_text
    result.update(fields or {})
    if error:
        result["error"] = error
    return result


def transcribe(
    model: EncDecCTCModel,
    records: Sequence[dict],
    output_path: str | os.PathLike,
    batch_size: int,
    debug: bool = False,
    chunking: Optional[Chunking] = None,
    timestamps: bool = False,
    output_format: Optional[str] = None,
) -> TranscriptionSummary:
    """Transcribe ``records`` with the model's current decoding strategy into the manifest ``output_path``.

    Each output record is its input record plus ``pred_text`` or ``error`` (:func:`output_record`), in input
    order; a long input damaged part-way gets both: the transcript of the audio before the damage, and the
    error saying where it lies. Records are appended batch by batch to ``<output_path>.partial``, which is
    renamed to ``output_path`` when all are written: an interrupted run leaves only the ``.partial`` file (with
    every finished batch in it), never a file under the final name that looks complete.

    Args:
        model: a CTC model in eval mode.
        records: manifest records with ``audio_filepath`` (see :func:`input_records`).
        output_path: the manifest to write.
        batch_size: inputs (or buffers of a long input) per forward pass, at least 1.
        debug: raise the first failure with its traceback instead of recording it. (Default: False)
        chunking: how inputs longer than one buffer are chunked. (Default: ``Chunking()``)
        timestamps: add NeMo's ``word`` and ``segment`` lists to each record. (Default: False)
        output_format: also write a file per transcribed input beside ``output_path``, named after the audio
            file: ``srt``, ``vtt`` or ``ctm`` (:func:`~ibnet_nemo.timestamps.write_timed_file`); the record
            names it (absolute) in ``<format>_filepath``. (Default: None)

    Raises:
        ValueError: ``output_format`` is not one of ``srt``, ``vtt``, ``ctm``, or timestamps are asked of a
            decoding strategy that cannot time words.
    """
    timed = check_timed_output(model.decoding.cfg, timestamps, output_format)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = output_path.with_name(output_path.name + ".partial")
    file_names: set[str] = set()
    transcribed = failed = 0
    with open(partial_path, "w", encoding="utf-8") as out, tqdm(total=len(records), desc="Transcribing") as bar:
        for batch in iter_log_probs(model, records, batch_size, debug=debug, chunking=chunking):
            decodable = [_decodable(outcome) for _, outcome in batch]
            log_probs = [lp for lp in decodable if lp is not None]
            decoded = iter(timed_transcripts(model, log_probs) if timed else decode_log_probs(model, log_probs))
            for (record, outcome), lp in zip(batch, decodable):
                error = "" if isinstance(outcome, np.ndarray) else str(outcome)
                text, fields = None, {}
                if lp is not None:
                    transcript = next(decoded)
                    text = transcript.text if timed else transcript
                    if timestamps:
                        fields.update(word=transcript.words, segment=transcript.segments)
                    if output_format is not None:
                        path = _timed_file_path(output_path.parent, record["audio_filepath"], output_format, file_names)
                        write_timed_file(path, output_format, transcript, path.stem)
                        fields[f"{output_format}_filepath"] = str(path.resolve())
                transcribed += not error
                failed += bool(error)
                out.write(json.dumps(output_record(record, text, error, fields), ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(batch))
    os.replace(partial_path, output_path)
    return TranscriptionSummary(output_path=output_path, transcribed=transcribed, failed=failed)


def _decodable(outcome: np.ndarray | AudioError) -> Optional[np.ndarray]:
    """The log-probabilities of an outcome to decode: all of them, those before the damage, or none."""
    if isinstance(outcome, np.ndarray):
        return outcome
    return outcome.log_probs if isinstance(outcome, PartialLogProbs) else None


def _timed_file_path(folder: Path, audio_filepath: str, output_format: str, taken: set[str]) -> Path:
    """``<folder>/<audio stem>.<format>``, numbered ``<stem>-2``, ... when the stem came earlier in this run."""
    stem = Path(audio_filepath).stem
    name, number = stem, 1
    while name in taken:
        number += 1
        name = f"{stem}-{number}"
    taken.add(name)
    return folder / f"{name}.{output_format}"


def run_transcription(cfg: TranscriptionConfig | DictConfig) -> TranscriptionSummary:
    """Everything ``examples/transcribe_speech.py`` does: load the model, set decoding, transcribe the inputs.

    Raises:
        FileNotFoundError, ValueError: a problem with the options (model, inputs, LM, chunk lengths, output
            format, timestamps with a strategy that cannot time words), before any transcription.
    """
    records = input_records(cfg.audio_dir, cfg.dataset_manifest, cfg.audio_filepath)
    chunking = Chunking(cfg.chunk_len_in_secs, cfg.total_buffer_in_secs)
    check_timed_output(cfg.ctc_decoding, cfg.timestamps, cfg.output_format)
    model = load_model(cfg.model_path, cfg.cuda, cfg.quantize)
    set_decoding(model, cfg.ctc_decoding)
    return transcribe(
        model,
        records,
        cfg.output_filename,
        cfg.batch_size,
        debug=cfg.debug,
        chunking=chunking,
        timestamps=cfg.timestamps,
        output_format=cfg.output_format,
    )
