"""Finding coefficient files by (model family, prediction, steps / NFE, kind), reading only their headers.

Search path, in preference order: the folders the caller passes, then the folders in the environment variable
``ADASDE_COEFFICIENTS`` (``os.pathsep``-separated), then the shipped ``coefficients/data/``.  Folders are searched
recursively for ``*.safetensors``.  Among several matches the first in this order wins: folder rank, exact prediction
before a file whose prediction is "unknown", lower NFE, then the path (so the choice is deterministic).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import is_temp_file
from .io import CheckpointFileError, CoefficientFileError, load, read_header
from .record import Coefficients

log = logging.getLogger("adasde")

ENV_VAR = "ADASDE_COEFFICIENTS"
DATA_DIR = Path(__file__).resolve().parent / "data"
FAMILY_ALIASES = {
    "sd1": "sd15", "sd1.5": "sd15", "sd-1.5": "sd15", "sd_1.5": "sd15", "sd1x": "sd15", "sd1.x": "sd15",
    "sd2": "sd21", "sd2.x": "sd21", "sd-2.1": "sd21", "sd2.1": "sd21",
    "sd-xl": "sdxl", "sd_xl": "sdxl", "sd3.5": "sd3", "sd35": "sd3", "flux1": "flux", "flux.1": "flux",
    "cifar10": "edm-cifar10", "fmnist": "builtin-fmnist",
}


def normalize_family(family: str | None) -> str | None:
    """Canonical lower-case family name (``"SD1.5"`` -> ``"sd15"``)."""
    if family is None:
        return None
    f = str(family).strip().lower()
    return FAMILY_ALIASES.get(f, f)


@dataclass(frozen=True)
class CoefficientEntry:
    """One file found on the search path, with its parsed header metadata (tensors not loaded)."""

    path: Path
    meta: dict[str, Any]
    rank: int  # position of its folder in the search path

    @property
    def family(self) -> str:
        return normalize_family((self.meta.get("model") or {}).get("family", "unknown")) or "unknown"

    @property
    def prediction(self) -> str:
        return str((self.meta.get("model") or {}).get("prediction", "unknown"))

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind"))

    @property
    def steps(self) -> int | None:
        return self.meta.get("steps")

    @property
    def nfe(self) -> int | None:
        return self.meta.get("nfe")


def search_dirs(dirs: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
                include_default: bool = True) -> list[Path]:
    """Folders searched, in preference order: ``dirs``, ``$ADASDE_COEFFICIENTS``, the shipped data folder."""
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    out: list[Path] = [Path(d).expanduser() for d in (dirs or []) if str(d)]
    if include_default:
        out += [Path(d).expanduser() for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d.strip()]
        out.append(DATA_DIR)
    seen: set[str] = set()
    uniq = []
    for d in out:
        key = os.path.normcase(os.path.abspath(d))
        if key not in seen:
            seen.add(key)
            uniq.append(d)
    return uniq


def list_coefficient_files(dirs: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
                           include_default: bool = True) -> list[Path]:
    """Every ``*.safetensors`` under the search folders (missing folders are skipped), in preference order."""
    files: list[Path] = []
    for d in search_dirs(dirs, include_default):
        if d.is_dir():
            files += sorted(p for p in d.rglob("*.safetensors") if p.is_file() and not is_temp_file(p))
    return files


_CACHE: dict[str, tuple[tuple[float, int], dict[str, Any] | None]] = {}


def _meta(path: Path) -> dict[str, Any] | None:
    """Parsed header metadata (cached by mtime and size); None, with a warning, for unreadable files."""
    key = str(path)
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_mtime, st.st_size)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        meta: dict[str, Any] | None = read_header(path)[1]
    except CheckpointFileError:  # a distillation checkpoint beside its output: not ours to use, not a problem
        meta = None
    except CoefficientFileError as exc:
        log.warning("adasde: skipping %s", exc)
        meta = None
    _CACHE[key] = (stamp, meta)
    return meta


def scan(dirs: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
         include_default: bool = True) -> list[CoefficientEntry]:
    """Readable coefficient files on the search path with their metadata (headers only)."""
    ranks = {os.path.normcase(os.path.abspath(d)): i for i, d in enumerate(search_dirs(dirs, include_default))}
    out = []
    for d_key, rank in ranks.items():
        d = Path(d_key)
        if not d.is_dir():
            continue
        for p in sorted(x for x in d.rglob("*.safetensors") if x.is_file() and not is_temp_file(x)):
            meta = _meta(p)
            if meta is not None:
                out.append(CoefficientEntry(p, meta, rank))
    return out


def matching(
    family: str | None,
    prediction: str | None = None,
    steps: int | None = None,
    nfe: int | None = None,
    dirs: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
    kind: str | None = "adasde",
) -> list[CoefficientEntry]:
    """Entries that fit, best first (order: folder rank, exact prediction, NFE, path)."""
    fam = normalize_family(family)
    found = []
    for e in scan(dirs):
        if kind is not None and e.kind != kind:
            continue
        if fam is not None and e.family != fam:
            continue
        if prediction is not None and e.prediction not in (prediction, "unknown"):
            continue
        if steps is not None and e.steps != steps:
            continue
        if nfe is not None and e.nfe != nfe:
            continue
        found.append(e)
    found.sort(key=lambda e: (e.rank, e.prediction != prediction, e.nfe if isinstance(e.nfe, int) else 1 << 30,
                              str(e.path)))
    return found


def find_coefficients(
    family: str | None,
    prediction: str | None = None,
    steps: int | None = None,
    nfe: int | None = None,
    dirs: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
    kind: str | None = "adasde",
) -> Coefficients | None:
    """The preferred coefficient set for a model, loaded and validated, or None when nothing fits (callers then fall
    back to untrained AdaSDE with a warning, docs/ALGORITHMS.md section 10).  ``steps`` counts student intervals (grid
    points - 1); ``nfe`` is the file's NFE on its trained grid (section 3.3).  A file whose header matches but whose
    data is broken is skipped with a warning."""
    for e in matching(family, prediction, steps, nfe, dirs, kind):
        try:
            return load(e.path)
        except CoefficientFileError as exc:
            log.warning("adasde: skipping %s", exc)
    return None


def describe(coeffs: Coefficients | None) -> str:
    """One line for UIs and logs: kind, family, NFE, steps, AFS, file."""
    if coeffs is None:
        return "untrained AdaSDE (DPM-Solver-2: r=0.5, a=c=1, gamma=0)"
    form = f"{coeffs.base}, {'predictor' if coeffs.predictor else 'constant'}"
    kind = {"adasde": "AdaSDE", "amed": "AMED", "amed_plugin": f"AMED-Plugin({form})"}.get(coeffs.kind, coeffs.kind)
    afs = ", AFS" if coeffs.afs else ""
    src = Path(coeffs.source).name if coeffs.source else "in memory"
    return (f"{kind} · {coeffs.model.family} · NFE {coeffs.nfe} ({coeffs.steps} steps, K={coeffs.K}{afs}, "
            f"{coeffs.schedule}) · {src}")
