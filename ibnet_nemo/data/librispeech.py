"""LibriSpeech to NeMo manifests: from extracted folders, from the OpenSLR tarballs, or downloaded.

LibriSpeech lays out ``LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac`` beside one
``<speaker>-<chapter>.trans.txt`` per chapter (``<utterance id> <UPPER-CASE TRANSCRIPT>`` a line). The FLAC files
are used as they are (NeMo reads FLAC through soundfile); the transcripts are lower-cased to the models'
28-character vocabulary (a-z, apostrophe, space).
"""

from __future__ import annotations

import os
import tarfile
import urllib.request
from pathlib import Path
from typing import Iterable

import soundfile as sf
from tqdm.auto import tqdm

from ibnet_nemo.data.manifest import write_manifest
from ibnet_nemo.data.manifest_check import normalize_transcript

__all__ = [
    "LIBRISPEECH_URL",
    "SUBSETS",
    "VOCABULARY",
    "build_manifest",
    "download",
    "extract",
    "prepare_librispeech",
]

#: The subsets behind the published results: train on train-clean-100, report dev/test clean/other.
SUBSETS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")
#: OpenSLR resource 12; ``{subset}`` is one of :data:`SUBSETS`.
LIBRISPEECH_URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
#: The models' output characters: what every normalized transcript must consist of.
VOCABULARY = frozenset(" abcdefghijklmnopqrstuvwxyz'")


def download(subset: str, destination: str | os.PathLike, url_template: str = LIBRISPEECH_URL) -> Path:
    """Download ``<subset>.tar.gz`` into ``destination`` (a temporary name until complete). Returns its path."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / f"{subset}.tar.gz"
    partial = target.with_name(target.name + ".part")
    url = url_template.format(subset=subset)
    with urllib.request.urlopen(url) as response, open(partial, "wb") as f:
        length = response.headers.get("Content-Length")
        total = int(length) if length else None
        with tqdm(total=total, desc=f"downloading {subset}", unit="B", unit_scale=True, unit_divisor=1024) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    partial.replace(target)
    print(f"Downloaded {url} to {target}")
    return target


def extract(tarball: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Extract a LibriSpeech tarball under ``destination`` (members may not leave it)."""
    destination = Path(destination)
    with tarfile.open(tarball) as archive:
        members = archive.getmembers()
        for member in tqdm(members, desc=f"extracting {Path(tarball).name}", unit=" files"):
            archive.extract(member, destination, filter="data")


def _subset_dir(root: Path, subset: str) -> Path | None:
    """``root/LibriSpeech/<subset>`` or ``root/<subset>``, whichever exists."""
    for candidate in (root / "LibriSpeech" / subset, root / subset):
        if candidate.is_dir():
            return candidate
    return None


def build_manifest(subset_dir: str | os.PathLike, manifest: str | os.PathLike) -> int:
    """Write the NeMo manifest of one extracted subset (absolute FLAC paths, durations, lower-case text).

    Returns:
        The number of utterances written.

    Raises:
        FileNotFoundError: a transcript names an utterance whose FLAC file is missing.
        ValueError: a transcript line is malformed or holds characters outside :data:`VOCABULARY`.
    """
    subset_dir = Path(subset_dir).resolve()
    transcripts = sorted(subset_dir.rglob("*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(f"no *.trans.txt files under {subset_dir}")

    records = []
    for transcript in tqdm(transcripts, desc=f"indexing {subset_dir.name}", unit=" chapters"):
        for number, line in enumerate(transcript.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utterance, _, text = line.partition(" ")
            text = normalize_transcript(text)
            if not text or not set(text) <= VOCABULARY:
                raise ValueError(f"{transcript}:{number}: unexpected transcript line {line!r}")
            audio = transcript.parent / f"{utterance}.flac"
            if not audio.is_file():
                raise FileNotFoundError(f"{transcript}:{number}: {audio} is missing")
            info = sf.info(str(audio))
            records.append({"audio_filepath": str(audio), "duration": info.frames / info.samplerate, "text": text})
    write_manifest(manifest, records)
    return len(records)


def prepare_librispeech(
    data_root: str | os.PathLike,
    subsets: Iterable[str] = SUBSETS,
    source: str | os.PathLike | None = None,
    url_template: str | None = None,
) -> dict[str, Path]:
    """Make ``<data_root>/<subset with _>.json`` for every subset, taking the audio from the first place found.

    Per subset, in order: an extracted ``<data_root>/LibriSpeech/<subset>``; in ``source``, an extracted
    ``LibriSpeech/<subset>`` (or ``<subset>``) folder, used in place, or a ``<subset>.tar.gz`` extracted into
    ``data_root``; a download from ``url_template`` (when given) extracted into ``data_root``.

    Returns:
        ``{subset: manifest path}``.

    Raises:
        ValueError: an unknown subset name.
        FileNotFoundError: a subset is in none of the places (the message lists where it looked).
    """
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for subset in subsets:
        if subset not in SUBSETS:
            raise ValueError(f"unknown LibriSpeech subset {subset!r}; expected one of {', '.join(SUBSETS)}")
        subset_dir = _subset_dir(data_root, subset)
        if subset_dir is None and source is not None:
            subset_dir = _subset_dir(Path(source), subset)
            tarball = Path(source) / f"{subset}.tar.gz"
            if subset_dir is None and tarball.is_file():
                extract(tarball, data_root)
                subset_dir = _subset_dir(data_root, subset)
        if subset_dir is None and url_template is not None:
            tarball = download(subset, data_root, url_template)
            extract(tarball, data_root)
            tarball.unlink()
            subset_dir = _subset_dir(data_root, subset)
        if subset_dir is None:
            places = [str(data_root / "LibriSpeech" / subset)]
            if source is not None:
                places += [str(Path(source) / "LibriSpeech" / subset), str(Path(source) / f"{subset}.tar.gz")]
            raise FileNotFoundError(
                f"LibriSpeech {subset} not found in {', '.join(places)}; pass --source or --download"
            )
        manifest = data_root / f"{subset.replace('-', '_')}.json"
        count = build_manifest(subset_dir, manifest)
        print(f"{subset}: {count} utterances -> {manifest}")
        manifests[subset] = manifest
    return manifests
