"""LibriSpeech preparation from a fake miniature LibriSpeech tree: extracted folders, tarballs, download."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO

from ibnet_nemo.data.librispeech import SUBSETS, prepare_librispeech
from ibnet_nemo.data.manifest import read_manifest

SAMPLE_RATE = 16000
# subset -> {(speaker, chapter): [(utterance, seconds, transcript)]}
FAKE = {
    "dev-clean": {(84, 121123): [(0, 0.5, "GO  DO YOU HEAR"), (1, 1.25, "BUT IN LESS THAN FIVE MINUTES")]},
    "test-other": {(1688, 142285): [(0, 0.75, "THERE'S IRON THEY SAY")], (367, 130732): [(2, 1.0, "NO")]},
}


def _fake_librispeech(root):
    """``root/LibriSpeech/<subset>/<speaker>/<chapter>/`` with FLAC files and one ``*.trans.txt`` per chapter."""
    for subset, chapters in FAKE.items():
        for (speaker, chapter), utterances in chapters.items():
            folder = root / "LibriSpeech" / subset / str(speaker) / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for number, seconds, text in utterances:
                name = f"{speaker}-{chapter}-{number:04d}"
                sf.write(folder / f"{name}.flac", np.zeros(int(seconds * SAMPLE_RATE), np.int16), SAMPLE_RATE)
                lines.append(f"{name} {text}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def _expected(subset_root):
    """What the manifest of the fake ``subset`` must hold, with audio under ``subset_root``."""
    rows = []
    for (speaker, chapter), utterances in sorted(FAKE[subset_root.name].items(), key=lambda item: str(item[0])):
        for number, seconds, text in utterances:
            audio = subset_root / str(speaker) / str(chapter) / f"{speaker}-{chapter}-{number:04d}.flac"
            rows.append({"audio_filepath": str(audio), "duration": seconds, "text": " ".join(text.lower().split())})
    return rows


def test_extracted_folders_are_used_in_place(tmp_path):
    source = _fake_librispeech(tmp_path / "source")
    manifests = prepare_librispeech(tmp_path / "data", ["dev-clean", "test-other"], source=source)

    assert manifests == {
        "dev-clean": tmp_path / "data" / "dev_clean.json",
        "test-other": tmp_path / "data" / "test_other.json",
    }
    for subset, manifest in manifests.items():
        assert list(read_manifest(manifest)) == _expected(source / "LibriSpeech" / subset)
    assert list(read_manifest(manifests["dev-clean"]))[0]["text"] == "go do you hear"
    assert list(read_manifest(manifests["test-other"]))[0]["text"] == "there's iron they say"


def test_tarballs_are_extracted_and_the_script_prints_the_manifests(tmp_path):
    tree = _fake_librispeech(tmp_path / "tree")
    source = tmp_path / "tarballs"
    source.mkdir()
    for subset in FAKE:
        with tarfile.open(source / f"{subset}.tar.gz", "w:gz") as archive:
            archive.add(tree / "LibriSpeech" / subset, arcname=f"LibriSpeech/{subset}")
    data_root = tmp_path / "data"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "get_librispeech_data.py"),
            f"--data_root={data_root}",
            "--data_sets=dev_clean,test_other",
            f"--source={source}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"dev-clean: 2 utterances -> {data_root / 'dev_clean.json'}" in result.stdout
    assert f"test-other: 2 utterances -> {data_root / 'test_other.json'}" in result.stdout
    for subset in FAKE:
        manifest = data_root / f"{subset.replace('-', '_')}.json"
        assert list(read_manifest(manifest)) == _expected(data_root / "LibriSpeech" / subset)


def test_download_from_a_url_template(tmp_path):
    tree = _fake_librispeech(tmp_path / "tree")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "dev-clean.tar.gz", "w:gz") as archive:
        archive.add(tree / "LibriSpeech" / "dev-clean", arcname="LibriSpeech/dev-clean")
    data_root = tmp_path / "data"
    manifests = prepare_librispeech(data_root, ["dev-clean"], url_template=f"file://{mirror}/{{subset}}.tar.gz")
    assert list(read_manifest(manifests["dev-clean"])) == _expected(data_root / "LibriSpeech" / "dev-clean")
    assert not list(data_root.glob("*.tar.gz*"))  # the tarball is removed after extraction


def test_missing_subsets_and_bad_transcripts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown LibriSpeech subset 'train-other-500'"):
        prepare_librispeech(tmp_path / "data", ["train-other-500"])
    with pytest.raises(FileNotFoundError, match="LibriSpeech dev-clean not found in .*pass --source or --download"):
        prepare_librispeech(tmp_path / "data", ["dev-clean"], source=tmp_path)
    source = _fake_librispeech(tmp_path / "source")
    (next((source / "LibriSpeech" / "dev-clean").rglob("*.trans.txt"))).write_text("84-121123-0000 NAÏVE\n")
    with pytest.raises(ValueError, match="unexpected transcript line '84-121123-0000 NAÏVE'"):
        prepare_librispeech(tmp_path / "data", ["dev-clean"], source=source)
    assert set(SUBSETS) == {"train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"}
