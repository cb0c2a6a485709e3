"""Write files so that a failure leaves nothing half-written: temporary name, then rename."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, IO, Iterator

__all__ = ["OutputPathError", "atomic_write", "check_output_path", "run_inputs", "check_distinct", "write_file"]

#: The files the current run reads (real path → how the run names it): never written over.
_INPUTS: dict[str, str] = {}


def _key(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(path))


@contextlib.contextmanager
def run_inputs(inputs: dict[str, str | os.PathLike | None]) -> Iterator[None]:
    """For the duration of a run: :func:`atomic_write` refuses to write onto any of
    ``inputs`` (what names it, e.g. ``"--artifact"`` → path; None entries are skipped)."""
    saved = dict(_INPUTS)
    _INPUTS.update({_key(p): what for what, p in inputs.items() if p})
    try:
        yield
    finally:
        _INPUTS.clear()
        _INPUTS.update(saved)


def check_distinct(outputs: dict[str, str | os.PathLike | None]) -> None:
    """Outputs of one run (what names each → path) that name an input of the run
    (:func:`run_inputs`) or each other: :class:`OutputPathError` naming both, before any work."""
    seen: dict[str, str] = {}
    for what, p in outputs.items():
        if not p:
            continue
        k = _key(p)
        if k in _INPUTS:
            raise OutputPathError(f"{what} {p}: is the run's input ({_INPUTS[k]}); write the output elsewhere")
        if k in seen:
            raise OutputPathError(f"{what} {p}: is also {seen[k]}; give each output its own path")
        seen[k] = what


class OutputPathError(ValueError):
    """An output path that is not a regular file or a new path (a folder, a symlink, a
    FIFO, a device): quantrtl never replaces those."""


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` if it is missing or a regular file (not through a symlink); else
    :class:`OutputPathError` naming it.  Flows call it before any work."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise OutputPathError(f"{path}: cannot be written ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(f"{path}: is a symbolic link; give the path of a regular file or a new one")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise OutputPathError(f"{path}: is {kind}; results go only to regular files or new paths")
    return path


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, text, or a function writing to a binary file) to ``path``.

    The content goes to a temporary file in the same folder, which is renamed over
    ``path`` only once complete; on any error the temporary file is removed.  Only a
    regular file or a missing path is replaced (:func:`check_output_path`).
    """
    path = check_output_path(path)
    if _key(path) in _INPUTS:
        raise OutputPathError(f"{path}: is the run's input ({_INPUTS[_key(path)]}); it is never written over")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _naming(e: OSError, path: str | os.PathLike) -> OSError:
    """``e`` with ``path`` as its file name when it has none (a write's error, e.g. a full
    disk, names no file: the user would not know which disk)."""
    return e if e.filename is not None else type(e)(e.errno, e.strerror or str(e), str(path))


def write_file(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a scratch file (in a run's own folder: no rename needed); an error names ``path``."""
    path = Path(path)
    try:
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    except OSError as e:
        raise _naming(e, path) from None
    return path
