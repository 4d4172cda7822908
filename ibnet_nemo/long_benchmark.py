"""How well long recordings are transcribed: a recording made by joining a manifest's utterances, measured against
the same utterances transcribed one by one (the tables in docs/transcription.md, "Long recordings").

    python -m ibnet_nemo.long_benchmark MODEL.nemo MANIFEST.json --work-dir long_bench [--minutes 30]

The recording is the manifest's utterances in order, cycled until it is ``--minutes`` long, with
``--gap-seconds`` of silence between them; each utterance's speech onset in it is known. Measured, all in one
process on the same inputs, greedy decoding:

- WER of the recording (with the default chunking) and of its utterances one by one;
- the share of utterances whose first recognized word starts within ``--onset-tolerance`` seconds of the
  utterance's speech onset;
- WER for each ``--buffers`` pair ``chunk_len_in_secs:total_buffer_in_secs``, and for the recording run whole
  as one sequence (``whole``);
- audio seconds per second of every run (the median of ``--repeats`` rounds, each round running everything once,
  so that all see the same mix of machine load);
- resident memory of a fresh process transcribing a recording of each of ``--memory-minutes``: with the model
  loaded, and at its peak while transcribing (Linux: the peak is reset after loading).

Writes ``long_benchmark.json`` into the work folder and prints the tables as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import librosa
import numpy as np
import soundfile as sf
import torch
from nemo.collections.asr.metrics.wer import word_error_rate

from ibnet_nemo.audio import load_audio
from ibnet_nemo.data.manifest import read_manifest
from ibnet_nemo.inference import CHUNK_LEN_IN_SECS, TOTAL_BUFFER_IN_SECS, Chunking, load_model
from ibnet_nemo.transcribe import transcribe

__all__ = ["RecordingUtterance", "build_recording", "first_word_offsets", "main"]

# An utterance's speech starts at its first 10 ms frame within this many dB of its loudest frame.
_ONSET_TOP_DB = 30


@dataclass(frozen=True)
class RecordingUtterance:
    """One utterance of a joined recording: its reference text, where its audio starts and ends, and where its
    speech starts (the first 10 ms frame within 30 dB of its loudest), in seconds from the start of the recording."""

    text: str
    start: float
    end: float
    onset: float


def build_recording(
    records: Sequence[dict], path: str | Path, seconds: float, gap_seconds: float = 0.5, sample_rate: int = 16000
) -> list[RecordingUtterance]:
    """Write the utterances of ``records`` (cycled) with ``gap_seconds`` of silence between them into the 16-bit
    WAV ``path`` until it is at least ``seconds`` long, one utterance at a time.

    Args:
        records: manifest records with ``audio_filepath`` and ``text``.
        path: the WAV file to write.
        seconds: the least duration of the recording.
        gap_seconds: silence after each utterance. (Default: 0.5)
        sample_rate: of the recording; utterances at other rates are resampled. (Default: 16000)

    Returns:
        The utterances in order, with their places in the recording.
    """
    if not records:
        raise ValueError("no records to join")
    gap = np.zeros(round(gap_seconds * sample_rate), dtype=np.float32)
    utterances: list[RecordingUtterance] = []
    position = 0
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as out:
        while position < seconds * sample_rate:
            record = records[len(utterances) % len(records)]
            audio = load_audio(record["audio_filepath"], sample_rate)
            _, (speech_start, _) = librosa.effects.trim(
                audio, top_db=_ONSET_TOP_DB, frame_length=400, hop_length=sample_rate // 100
            )
            utterances.append(
                RecordingUtterance(
                    record["text"],
                    position / sample_rate,
                    (position + audio.size) / sample_rate,
                    (position + int(speech_start)) / sample_rate,
                )
            )
            out.write(np.concatenate([audio, gap]))
            position += audio.size + gap.size
    return utterances


def first_word_offsets(words: Sequence[dict], utterances: Sequence[RecordingUtterance]) -> list[Optional[float]]:
    """Per utterance, the start of its first recognized word minus its speech onset, in seconds.

    A word belongs to the utterance within whose span (from half-way through the silence before it to half-way
    through the silence after it) it starts. None for an utterance without a word.
    """
    boundaries = [0.0] + [(before.end + after.start) / 2 for before, after in zip(utterances, utterances[1:])]
    offsets: list[Optional[float]] = [None] * len(utterances)
    index = 0
    for word in words:
        while index + 1 < len(utterances) and word["start"] >= boundaries[index + 1]:
            index += 1
        if offsets[index] is None and word["start"] >= boundaries[index]:
            offsets[index] = word["start"] - utterances[index].onset
    return offsets


def _status_mb(field: str) -> float:
    """A memory figure of this process from Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``: peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise ValueError(f"no {field} in /proc/self/status")


def _run_child(model_path: str, audio: Path, output: Path) -> dict:
    """Transcribe ``audio`` in a fresh process; its wall time and peak resident memory."""
    run = subprocess.run(
        [sys.executable, "-m", "ibnet_nemo.long_benchmark", "--child", model_path, str(audio), str(output)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def _child(model_path: str, audio: str, output: str) -> None:
    model = load_model(model_path, cuda=-1)
    process_peak = _status_mb("VmHWM")  # restoring the .nemo (unpacking it) can peak above what follows
    loaded = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak to the present resident size
    start = time.perf_counter()
    transcribe(model, [{"audio_filepath": audio}], output, batch_size=8)
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "model_loaded_rss_mb": loaded,
                "transcription_peak_rss_mb": _status_mb("VmHWM"),
                "loading_peak_rss_mb": process_peak,
            }
        )
    )


def measure(args: argparse.Namespace) -> dict:
    """Everything the module doc lists; returns it as a JSON-able dict."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    records = list(read_manifest(args.manifest))
    recording = work / f"recording_{args.minutes:g}min.wav"
    utterances = build_recording(records, recording, args.minutes * 60, args.gap_seconds)
    duration = sf.info(str(recording)).duration
    cycled = [records[i % len(records)] for i in range(len(utterances))]
    speech_seconds = sum(sf.info(r["audio_filepath"]).duration for r in cycled)
    reference = " ".join(u.text for u in utterances)
    model = load_model(args.model, cuda=-1)
    load_before = os.getloadavg()

    def run_long(buffer: str) -> tuple[float, dict]:
        chunk, total = (duration, duration) if buffer == "whole" else map(float, buffer.split(":"))
        output = work / f"buffer_{buffer.replace(':', '_')}.json"
        start = time.perf_counter()
        transcribe(
            model,
            [{"audio_filepath": str(recording)}],
            output,
            args.batch_size,
            chunking=Chunking(chunk, total),
            timestamps=True,
        )
        elapsed = time.perf_counter() - start
        (record,) = read_manifest(output)
        return elapsed, record

    def run_one_by_one() -> tuple[float, list[dict]]:
        start = time.perf_counter()
        transcribe(model, cycled, work / "one_by_one.json", args.batch_size)
        return time.perf_counter() - start, list(read_manifest(work / "one_by_one.json"))

    default = f"{CHUNK_LEN_IN_SECS:g}:{TOTAL_BUFFER_IN_SECS:g}"
    buffers = list(dict.fromkeys([default, *args.buffers]))
    times: dict[str, list[float]] = {name: [] for name in ["one_by_one", *buffers]}
    outputs: dict[str, dict] = {}
    for _ in range(args.repeats):  # interleaved, so that every run sees the same mix of machine load
        elapsed, singles = run_one_by_one()
        times["one_by_one"].append(elapsed)
        for buffer in buffers:
            elapsed, outputs[buffer] = run_long(buffer)
            times[buffer].append(elapsed)
    offsets = first_word_offsets(outputs[default]["word"], utterances)
    within = sum(o is not None and abs(o) <= args.onset_tolerance for o in offsets)
    results = {
        "model": args.model,
        "manifest": args.manifest,
        "utterances": len(utterances),
        "recording_seconds": duration,
        "speech_seconds": speech_seconds,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load_before,
        "load_average_at_end": os.getloadavg(),
        "repeats": args.repeats,
        "chunk_len_in_secs": CHUNK_LEN_IN_SECS,
        "total_buffer_in_secs": TOTAL_BUFFER_IN_SECS,
        "one_by_one": {
            "wer": word_error_rate([r["pred_text"] for r in singles], [u.text for u in utterances]),
            "seconds": statistics.median(times["one_by_one"]),
            "audio_seconds": speech_seconds,
        },
        "long": {
            "wer": word_error_rate([outputs[default]["pred_text"]], [reference]),
            "seconds": statistics.median(times[default]),
            "audio_seconds": duration,
        },
        "onsets": {
            "tolerance": args.onset_tolerance,
            "within": within,
            "share": within / len(utterances),
            "median_offset": statistics.median(o for o in offsets if o is not None),
            "without_word": sum(o is None for o in offsets),
        },
        "buffers": [
            {
                "buffer": buffer,
                "wer": word_error_rate([outputs[buffer]["pred_text"]], [reference]),
                "audio_seconds_per_second": duration / statistics.median(times[buffer]),
            }
            for buffer in args.buffers
        ],
    }
    results["memory"] = {}
    for minutes in args.memory_minutes:
        path = work / f"recording_{minutes:g}min.wav"
        build_recording(records, path, minutes * 60, args.gap_seconds)
        results["memory"][f"{minutes:g}"] = _run_child(args.model, path, work / f"memory_{minutes:g}min.json")
    return results


def _markdown(results: dict) -> str:
    one, long = results["one_by_one"], results["long"]
    lines = [
        "| run | WER | wall seconds | audio seconds per second |",
        "|---|---|---|---|",
        f"| {results['utterances']} utterances one by one | {100 * one['wer']:.1f} % | {one['seconds']:.1f} | "
        f"{one['audio_seconds'] / one['seconds']:.1f} |",
        f"| one {results['recording_seconds'] / 60:.1f}-minute recording | {100 * long['wer']:.1f} % | "
        f"{long['seconds']:.1f} | {long['audio_seconds'] / long['seconds']:.1f} |",
        "",
        f"First word within {results['onsets']['tolerance']} s of the speech onset: {results['onsets']['within']} of "
        f"{results['utterances']} utterances ({100 * results['onsets']['share']:.1f} %), median offset "
        f"{results['onsets']['median_offset']:+.2f} s.",
        "",
        "| chunk_len_in_secs | total_buffer_in_secs | WER | audio seconds per second |",
        "|---|---|---|---|",
        *(
            (
                "| whole recording, one sequence | | "
                if row["buffer"] == "whole"
                else "| {} | {} | ".format(*row["buffer"].split(":"))
            )
            + f"{100 * row['wer']:.1f} % | "
            f"{row['audio_seconds_per_second']:.1f} |"
            for row in results["buffers"]
        ),
        "",
        "| recording | resident MB with the model loaded | peak resident MB while transcribing |",
        "|---|---|---|",
        *(
            f"| {minutes} min | {run['model_loaded_rss_mb']:.0f} | {run['transcription_peak_rss_mb']:.0f} |"
            for minutes, run in results["memory"].items()
        ),
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ibnet_nemo.long_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a CTC model's .nemo file")
    parser.add_argument("manifest", help="a NeMo manifest with reference text")
    parser.add_argument("--work-dir", default="long_benchmark")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--memory-minutes", type=float, nargs="+", default=[1.0, 5.0, 60.0])
    parser.add_argument("--gap-seconds", type=float, default=0.5)
    parser.add_argument("--onset-tolerance", type=float, default=0.25)
    parser.add_argument(
        "--buffers", nargs="+", default=["2:6", "4:8", "8:10", "8:12", "8:16", "16:20", "32:36", "whole"]
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:  # one measured transcription (see _run_child)
        _child(*argv[1:])
        return
    args = parser.parse_args(argv)
    results = measure(args)
    (Path(args.work_dir) / "long_benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    print(_markdown(results))


if __name__ == "__main__":
    main()
