"""fileio: stale temporary files of dead writers are removed, live writers' kept; modes follow the umask."""

from __future__ import annotations

import os
import subprocess
import sys

from adasde.fileio import TEMP_SUFFIX, atomic_write_bytes, clean_stale_temps, is_temp_file


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_writers_are_removed(tmp_path):
    dead = tmp_path / f".x.bin.abc123.{_dead_pid()}{TEMP_SUFFIX}"
    live = tmp_path / f".x.bin.def456.{os.getpid()}{TEMP_SUFFIX}"
    other = tmp_path / f".y.bin.ghi789.{_dead_pid()}{TEMP_SUFFIX}"
    for p in (dead, live, other):
        p.write_bytes(b"partial")
    assert all(is_temp_file(p) for p in (dead, live, other)) and not is_temp_file(tmp_path / "x.bin")
    assert clean_stale_temps(tmp_path / "x.bin") == [dead]  # only this target's, only dead writers'
    dead.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "x.bin", b"done")  # a writer cleans its folder's stale files first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "x.bin"])
    assert (tmp_path / "x.bin").read_bytes() == b"done"


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        p = atomic_write_bytes(tmp_path / "a.bin", b"1")
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o640
