"""NeMo manifests: one JSON object a line with ``audio_filepath``, ``duration`` and ``text``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

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
    """Write ``records`` as a manifest atomically: a temporary file in the same folder, then a rename.

    An interrupted write never leaves a partial file under ``path``. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
