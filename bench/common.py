"""Shared helpers for benchmark reports: machine description, date, Markdown tables, hand-written notes, atomic
writes."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..fileio import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NOTES_DIR = Path(__file__).resolve().parent / "notes"


def machine() -> str:
    """One line describing where a benchmark ran."""
    from ..builtin.train import machine_info

    cpu = machine_info()["cpu"]
    parts = [f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return "; ".join(parts)


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out)


def notes(name: str) -> str:
    """The hand-written notes a report carries verbatim (``bench/notes/<name>.md``: what was tried; edited by hand,
    never generated); "" when there is no such file (an installed package has no notes)."""
    try:
        return (NOTES_DIR / f"{name}.md").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def write_report(name: str, text: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Atomically write ``<out_dir>/<name>.md`` (replacing it) and return its path.

    Without ``out_dir`` the report goes to ``bench/results/<name>.md`` only if that file does not exist yet; a
    committed result is never overwritten by default: the new report is ``bench/results/<name>-<YYYY-MM-DD>.md``
    (``-2``, ``-3``, ... if that exists too).
    """
    d = Path(out_dir) if out_dir else RESULTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.md"
    if not out_dir and path.exists():
        stem = f"{name}-{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d}"
        path, k = d / f"{stem}.md", 2
        while path.exists():
            path, k = d / f"{stem}-{k}.md", k + 1
    return atomic_write_text(path, text)
