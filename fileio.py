"""Atomic, permission-correct, lockable output files: the one way adasde writes a file (docs/ARCHITECTURE.md,
"Output files").

Every output is written to a unique temporary file in the target's folder (``.<name>.<random>.<pid>.adasde-tmp``),
flushed, given the mode a plain ``open()`` would give (``0o666 & ~umask``; ``mkstemp`` alone gives 0600, which a
WebUI or ComfyUI running as another user cannot read) and moved over the target with ``os.replace``.  A reader
therefore sees the previous version or the complete new one, never a half-written file; a writer killed before the
replace leaves only its temporary file, which the next writer of the same target removes once its process is gone
(:func:`clean_stale_temps`).  :class:`OutputLock` makes a second concurrent writer of the same output refuse with a
clear message instead of racing (last-writer-wins).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputFileError

TEMP_SUFFIX = ".adasde-tmp"
LOCK_SUFFIX = ".adasde-lock"
_UMASK_LOCK = threading.Lock()
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.(?P<pid>\d+)" + re.escape(TEMP_SUFFIX) + "$")


def current_umask() -> int:
    """The process umask (read without changing it for longer than two system calls)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): keep its file
    return True


def is_temp_file(path: str | os.PathLike) -> bool:
    """True for a temporary file of :func:`atomic_writer` (hosts and lookups skip these)."""
    return bool(_TEMP_RE.match(Path(path).name))


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` left by writers whose process no longer exists (e.g. after ``kill -9``).

    Only files of our own pattern for this target are considered; a live writer's file is kept.  Returns the removed
    paths.
    """
    p = Path(path)
    removed = []
    try:
        entries = list(p.parent.iterdir())
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if m is None or m.group("name") != p.name or _pid_alive(int(m.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            e.unlink()
            removed.append(e)
    return removed


_CLEANED: tuple[int, set[str]] = (-1, set())


def _clean_folder_once(folder: Path) -> None:
    """Remove the stale temporary files of dead writers in ``folder``, once per process and folder (a folder of
    many thousand images is listed once, not once per image)."""
    global _CLEANED
    if _CLEANED[0] != os.getpid():  # a forked child starts its own record
        _CLEANED = (os.getpid(), set())
    key = os.path.abspath(folder)
    if key in _CLEANED[1]:
        return
    _CLEANED[1].add(key)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if m is not None and not _pid_alive(int(m.group("pid"))):
            with contextlib.suppress(OSError):
                os.unlink(e.path)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise :class:`InputFileError` unless ``path`` can be written atomically (before any work starts).

    Refuses a path that is a folder, whose parent is not a folder, or whose folder does not accept new files (tested
    by creating and removing a temporary file there).  Creates missing parent folders.
    """
    p = Path(path)
    if p.is_dir():
        raise InputFileError(f"{what} {p} is a folder; pass a file path (e.g. {p / 'result'}...)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"{what} {p}: cannot create its folder {p.parent} ({exc.strerror or exc}); "
                             f"choose a writable location") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".{os.getpid()}{TEMP_SUFFIX}", dir=p.parent)
    except OSError as exc:
        raise InputFileError(f"{what} {p}: its folder {p.parent} is not writable ({exc.strerror or exc}); "
                             f"choose a writable location or fix the permissions") from None
    os.close(fd)
    os.unlink(tmp)
    if p.exists() and not os.access(p, os.W_OK) and not os.access(p.parent, os.W_OK):
        raise InputFileError(f"{what} {p} exists and cannot be replaced; choose another path")
    return p


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: int | None = None, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Context manager yielding a binary file; on a clean exit it becomes ``path`` atomically, else it is removed.

    ``mode``: permission bits of the result (default ``0o666 & ~umask``).  ``fsync``: flush the data to disk before
    the rename (survives a power loss, not only a killed process); off for bulk outputs such as sample images.
    Stale temporary files of dead writers in the target's folder are removed first (once per process and folder).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _clean_folder_once(p.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".{os.getpid()}{TEMP_SUFFIX}", dir=p.parent)
    ok = False
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, p)
        ok = True
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`); returns the path."""
    with atomic_writer(path, mode) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_save(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], mode: int | None = None,
                fsync: bool = True) -> Path:
    """Call ``write(file)`` (e.g. ``lambda f: np.savez(f, ...)`` or ``lambda f: torch.save(obj, f)``) into a
    temporary file and move it to ``path`` atomically; returns the path."""
    with atomic_writer(path, mode, fsync) as f:
        write(f)
    return Path(path)


class OutputLock:
    """An exclusive advisory lock on an output path (``<path>.adasde-lock`` beside it), held for a whole run.

    ``with OutputLock(out):`` raises :class:`InputFileError` at once when another process holds it, so two runs
    writing the same output refuse instead of overwriting each other.  Uses ``fcntl.flock`` (released by the kernel
    when the holder dies, even on ``kill -9``); on platforms without ``fcntl`` it falls back to no lock (the atomic
    writes still never tear a file).
    """

    def __init__(self, path: str | os.PathLike, what: str = "output") -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, default_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InputFileError(
                    f"{self.what} {self.path} is being written by another adasde run (lock {self.lock_path} is "
                    f"held); wait for it to finish or choose another output path") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file the previous holder unlinked after we opened it
                self._fd = fd
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                return self
            os.close(fd)
        raise InputFileError(f"{self.what} {self.path}: could not take the lock {self.lock_path}; try again")

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def atomic_savez(path: str | os.PathLike, compressed: bool = False, **arrays: Any) -> Path:
    """``np.savez`` (or ``np.savez_compressed``) of ``arrays`` to ``path``, atomically (:func:`atomic_save`)."""
    import numpy as np

    return atomic_save(path, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))
