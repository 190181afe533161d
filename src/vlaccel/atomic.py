"""Atomic writes: a file or a folder appears whole or not at all (a temp name next to it, then ``os.replace``).

Every file vlaccel writes for later use (policies, checkpoints, gates, results JSON) goes through here, so a run
killed while saving leaves the previous file intact rather than a torn one. A kill can leave a temp file
(``.NAME.XXXXXXXX.tmp``) behind; nothing reads those, and they can be deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["replacing", "write_text", "write_json", "folder", "check_writable"]


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; best effort where the system refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``path`` to write into; on success it replaces ``path`` in one step, on an
    error it is deleted and ``path`` is left as it was. The temp file is created empty with the usual
    permissions (``0o666`` less the umask), as ``open(path, "w")`` would. A ``path`` that is a symbolic link or
    not a regular file (``/dev/stdout``, a pipe) is yielded itself and written in place: replacing it would
    replace the link, not what it points to."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):  # /dev/stdout, a pipe: written in place
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_text(path: str | Path, text: str) -> Path:
    """``Path(path).write_text(text)``, atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any, **dumps: Any) -> Path:
    """``data`` as JSON (``json.dumps(data, **dumps)`` plus a newline) into ``path``, atomically."""
    return write_text(path, json.dumps(data, **dumps) + "\n")


@contextlib.contextmanager
def folder(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder next to ``path`` to write files into; on success they land in ``path``.

    A new ``path`` appears in one rename, with every file. Into an existing folder each file is moved with
    ``os.replace`` (each one whole; other files there, e.g. companion files, are kept); a sub-folder replaces the
    one of its name whole (the old one is renamed aside, the new one renamed in, the old one deleted). On an error
    the temp folder is deleted and ``path`` is left as it was (not created, if it did not exist).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; pass a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        for entry in tmp.iterdir():
            _fsync(entry)
        if not path.exists():
            os.replace(tmp, path)
        else:
            for entry in sorted(tmp.iterdir()):
                _move_into(entry, path / entry.name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(path)
    _fsync(path.parent)


def _move_into(entry: Path, target: Path) -> None:
    """``os.replace(entry, target)``, also where both are folders (``os.replace`` refuses a non-empty one)."""
    if entry.is_dir() and target.is_dir() and not target.is_symlink():
        aside = _temp_name(target)
        os.replace(target, aside)
        os.replace(entry, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(entry, target)


def check_writable(path: str | Path, what: str, folder: bool = False) -> Path:
    """Refuse (``UsageError`` naming ``what``, e.g. ``--json``) an output path that cannot be written, before any
    work: a file where a folder is needed or the reverse, or a nearest existing folder that refuses a new file
    (tried with a temporary file, removed at once). Creates nothing else; returns ``Path(path)``."""
    from vlaccel.errors import UsageError

    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path}: it is a file; pass a folder")
    if not folder and path.is_dir():
        raise UsageError(f"{what} {path}: it is a folder; pass a file path")
    parent = path if folder and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: {parent} is a file, not a folder; pass a path in a writable folder")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise UsageError(f"{what} {path}: cannot write in {parent} ({err.strerror or err}); pass a path in a "
                         "writable folder") from None
    return path
