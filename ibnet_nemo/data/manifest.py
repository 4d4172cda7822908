"""NeMo manifests: one JSON object a line with ``audio_filepath``, ``duration`` and ``text``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from ibnet_nemo.fileio import atomic_path

__all__ = ["read_manifest", "write_manifest"]


def read_manifest(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a manifest, skipping blank lines.

    Raises:
        ValueError: a line is not a JSON object (the message names the file and line).
    """
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield record


def write_manifest(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write ``records`` as a manifest atomically (:func:`~ibnet_nemo.fileio.atomic_path`).

    An interrupted write never leaves a partial file under ``path``. Returns ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
