"""Per-sample records (JSONL, flushed as they are written), atomic files and the run's log, so a killed
run loses nothing.

A kill can tear the last line of a JSONL file; readers drop such a line, and resume starts again from
the last complete record (or from the last saved online state, whichever is earlier).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a JSONL file; a torn or unreadable last line is dropped."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_bytes().split(b"\n")
    for line in lines[:-1]:  # the part after the last newline is never a complete record
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def encode_records(records: list[dict[str, Any]]) -> bytes:
    """JSONL exactly as RecordWriter writes it line by line."""
    return b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records)


class RecordWriter:
    """Appends one JSON line per sample; `keep` records of an earlier run are kept, the rest dropped."""

    def __init__(self, path: Path, keep: int = 0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, encode_records(read_records(path)[:keep]))
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()

    def sync(self) -> None:
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class RunLog:
    """run.log: what a run said it would do, its per-set results, warnings and its error, one flushed line
    each, appended to what earlier attempts wrote after a separator. With no path it writes nothing (the
    processes of a torchrun job other than rank 0). As a context manager it also takes Python warnings
    and, on the way out, the error that ended the run."""

    def __init__(self, path: Path | None, separator: str = "") -> None:
        self.file = None if path is None else open(path, "a", encoding="utf-8")
        if self.file is not None and self.file.tell() and separator:
            self.write(separator)

    def write(self, text: str) -> None:
        if self.file is None or self.file.closed:  # a warning from a thread that outlived the run
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write("".join(f"{stamp} {line}\n" for line in text.splitlines()))
        self.file.flush()

    def __enter__(self) -> RunLog:
        self.showwarning = warnings.showwarning

        def log_and_show(message, category, filename, lineno, file=None, line=None) -> None:
            self.write(f"warning: {category.__name__}: {message}")
            self.showwarning(message, category, filename, lineno, file, line)

        warnings.showwarning = log_and_show
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        warnings.showwarning = self.showwarning
        with contextlib.suppress(OSError):  # a full disk must not hide the error that ended the run
            if error is not None:
                self.write("error: " + ": ".join(filter(None, [type(error).__name__, str(error)])))
            if self.file is not None:
                self.file.close()
