"""The coefficient file format: one ``.safetensors`` file, tensors plus JSON metadata (docs/ARCHITECTURE.md).

Tensors: ``r, a, c, gamma, w`` (``[steps, K]``, float32), ``sigmas`` (``[steps + 1]``, float64, the positive student
grid of docs/ALGORITHMS.md section 2) and, for AMED, the predictor weights, prefix ``predictor.`` (section 4.1).
Everything else is JSON under the metadata key ``"adasde"``.  Reading never executes code: the safetensors header is
parsed as JSON by :func:`read_header` (also used by the fast lookup) and every value is validated; any problem raises
:class:`CoefficientFileError` naming the file, the value and the fix.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import AdasdeError
from ..samplers.schedules import SCHEDULES
from .record import BASES, FORMAT_VERSION, KINDS, PREDICTIONS, Coefficients, ModelIdentity

META_KEY = "adasde"
TABLES = ("r", "a", "c", "gamma", "w")
PREFIX = "predictor."
SCHEDULE_NAMES = (*SCHEDULES, "custom")  # "custom": a grid that came from no named schedule (host sigmas)
SIMPLEX_TOL = 1e-4
_MAX_HEADER = 64 * 1024 * 1024


class CoefficientFileError(AdasdeError, ValueError):
    """A coefficient file is missing, unreadable or invalid; the message names the file, the value and the fix."""


def _err(path: Any, what: str, fix: str) -> CoefficientFileError:
    return CoefficientFileError(f"coefficient file {path}: {what}. Fix: {fix}")


# ------------------------------------------------------------------------------------------------------- header
def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor table, parsed ``"adasde"`` metadata) of a coefficient file, reading only its header.

    Checks that the file exists, is a safetensors file, is not truncated and carries our metadata with a known format
    version.  Does not load tensor data.
    """
    p = Path(path)
    if not p.is_file():
        raise _err(p, "no such file", "check the path, or put coefficient files in one of the searched folders")
    size = p.stat().st_size
    regen = "re-save it with adasde (coefficients.save / `adasde distill`) or download it again"
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _err(p, f"not a safetensors file ({size} bytes, no header)", regen)
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > _MAX_HEADER:
            raise _err(p, f"not a safetensors file (header length {n})", regen)
        if 8 + n > size:
            raise _err(p, f"truncated file: header needs {8 + n} bytes but the file has {size}", regen)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _err(p, f"not a safetensors file (header is not JSON: {exc})", regen) from None
    if not isinstance(header, dict):
        raise _err(p, "not a safetensors file (header is not a JSON object)", regen)
    meta_all = header.pop("__metadata__", None) or {}
    end = 0
    for name, info in header.items():
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list) and isinstance(info.get("dtype"), str)
                and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2):
            raise _err(p, f"malformed safetensors entry for tensor {name!r}: {info!r}", regen)
        end = max(end, int(info["data_offsets"][1]))
    if 8 + n + end > size:
        raise _err(p, f"truncated file: tensor data needs {8 + n + end} bytes but the file has {size}", regen)
    if not isinstance(meta_all, dict) or META_KEY not in meta_all:
        raise _err(p, f"no {META_KEY!r} metadata (a plain safetensors file, e.g. model weights, not coefficients)",
                   "pass an adasde coefficient file (written by coefficients.save / `adasde distill`)")
    try:
        meta = json.loads(meta_all[META_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise _err(p, f"the {META_KEY!r} metadata is not valid JSON ({exc})", regen) from None
    if not isinstance(meta, dict):
        raise _err(p, f"the {META_KEY!r} metadata is not a JSON object: {meta!r}", regen)
    if isinstance(meta.get("format"), str) or not any(k in header for k in (*TABLES, "sigmas")):
        what = f"format {meta['format']!r}" if isinstance(meta.get("format"), str) else "no coefficient tables"
        raise _err(p, f"a model weights file ({what}, {len(header)} tensors), not a coefficient file",
                   "pass a coefficient file (`adasde coefficients list`, or write one with `adasde distill`)")
    version = meta.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise _err(p, f"unknown format version {version!r} (this adasde reads version {FORMAT_VERSION})",
                   "upgrade adasde (pip install -U adasde / update the extension), or re-export the file")
    return header, meta


# ------------------------------------------------------------------------------------------------- validation
def _finite(p: Any, name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = t[~torch.isfinite(t)].flatten()[:3].tolist()
        raise _err(p, f"{name} contains non-finite values {bad}", "re-distil the coefficients (training diverged)")


def validate(coeffs: Coefficients, where: Any = None) -> None:
    """Raise :class:`CoefficientFileError` unless ``coeffs`` is consistent (shapes, ranges, names; docs/ALGORITHMS.md
    sections 3.1 and 4.1): r in (0, 1), a > 0, c > 0, gamma >= 0, rows of w on the simplex, ``steps + 1`` positive
    strictly decreasing sigmas, known kind / base / schedule / prediction."""
    p = where if where is not None else (coeffs.source or "<in memory>")
    redo = "re-distil or re-export the coefficients"
    if coeffs.kind not in KINDS:
        raise _err(p, f"unknown kind {coeffs.kind!r}", f"use one of {', '.join(KINDS)}")
    if coeffs.kind == "amed_plugin" and coeffs.base not in BASES:
        raise _err(p, f"unknown AMED-Plugin base solver {coeffs.base!r}", f"use one of {', '.join(BASES)}")
    if coeffs.schedule not in SCHEDULE_NAMES:
        raise _err(p, f"unknown schedule {coeffs.schedule!r}", f"use one of {', '.join(SCHEDULE_NAMES)}")
    if not (isinstance(coeffs.rho, (int, float)) and math.isfinite(coeffs.rho) and coeffs.rho > 0):
        raise _err(p, f"rho must be a positive number, got {coeffs.rho!r}", redo)
    if coeffs.model.prediction not in PREDICTIONS:
        raise _err(p, f"unknown prediction {coeffs.model.prediction!r}", f"use one of {', '.join(PREDICTIONS)}")
    tabs = {}
    for name in TABLES:
        t = getattr(coeffs, name)
        if not torch.is_tensor(t) or t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
            raise _err(p, f"{name} must be a [steps, K] tensor, got {getattr(t, 'shape', type(t).__name__)}", redo)
        tabs[name] = t.detach().to(torch.float64)
    shape = tabs["r"].shape
    for name, t in tabs.items():
        if t.shape != shape:
            raise _err(p, f"inconsistent shapes: r is {list(shape)} but {name} is {list(t.shape)}", redo)
        _finite(p, name, t)
    r, a, c, g, w = (tabs[k] for k in TABLES)
    checks = (("r", r, (r > 0) & (r < 1), "in (0, 1)"), ("a", a, a > 0, "> 0"), ("c", c, c > 0, "> 0"),
              ("gamma", g, g >= 0, ">= 0"), ("w", w, w >= 0, ">= 0"))
    for name, t, ok, rule in checks:
        if not ok.all():
            raise _err(p, f"{name} must be {rule}, got {t[~ok].flatten()[:3].tolist()}", redo)
    sums = w.sum(-1)
    if ((sums - 1).abs() > SIMPLEX_TOL).any():
        raise _err(p, f"rows of w must sum to 1 (simplex), got row sums {sums.tolist()}", redo)
    s = coeffs.sigmas
    if not torch.is_tensor(s) or s.ndim != 1:
        raise _err(p, f"sigmas must be a 1-D tensor, got {getattr(s, 'shape', type(s).__name__)}", redo)
    if s.numel() != shape[0] + 1:
        raise _err(p, f"sigmas must have steps + 1 = {shape[0] + 1} points, got {s.numel()}", redo)
    s64 = s.detach().to(torch.float64)
    _finite(p, "sigmas", s64)
    if (s64 <= 0).any():
        raise _err(p, f"sigmas must be positive (no trailing 0), got {s64.tolist()}", redo)
    if (s64[1:] >= s64[:-1]).any():
        raise _err(p, f"sigmas must be strictly decreasing, got {s64.tolist()}", redo)
    if coeffs.kind == "amed" and not coeffs.predictor:
        raise _err(p, "kind 'amed' needs predictor weights (tensors 'predictor.*')", redo)
    for name, t in (coeffs.predictor or {}).items():
        _finite(p, PREFIX + name, t.detach().to(torch.float64))


# ------------------------------------------------------------------------------------------------ save / load
def _jsonable(v: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tensors become lists, paths strings."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if torch.is_tensor(v):
        return _jsonable(v.detach().cpu().tolist())
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return str(v)


def to_metadata(coeffs: Coefficients) -> dict[str, Any]:
    """The JSON fields of a file (everything except the tensors)."""
    training = dict(coeffs.training)
    m = coeffs.model
    return _jsonable({
        "version": FORMAT_VERSION,
        "kind": coeffs.kind,
        "base": coeffs.base,
        "schedule": coeffs.schedule,
        "rho": float(coeffs.rho),
        "afs": bool(coeffs.afs),
        "steps": coeffs.steps,
        "K": coeffs.K,
        "nfe": coeffs.nfe,
        "model": {"family": m.family, "prediction": m.prediction, "sigma_min": float(m.sigma_min),
                  "sigma_max": float(m.sigma_max), "fingerprint": m.fingerprint, "name": m.name},
        "training": training,
        "losses": training.get("losses"),
        "predictor_config": coeffs.predictor_config,
    })


def save(coeffs: Coefficients, path: str | os.PathLike) -> Path:
    """Validate and write ``coeffs`` to ``path`` (``.safetensors``) atomically (tmp file in the same folder, then
    ``os.replace``).  Returns the path."""
    from safetensors.torch import save_file

    p = Path(path)
    validate(coeffs, where=p)
    tensors = {k: getattr(coeffs, k).detach().to("cpu", torch.float32).contiguous() for k in TABLES}
    tensors["sigmas"] = coeffs.sigmas.detach().to("cpu", torch.float64).contiguous()
    for name, t in (coeffs.predictor or {}).items():
        tensors[PREFIX + name] = t.detach().cpu().contiguous()
    meta = {META_KEY: json.dumps(to_metadata(coeffs), sort_keys=True, allow_nan=False)}
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def _get(meta: dict[str, Any], key: str, types: type | tuple[type, ...], p: Any, default: Any = ...) -> Any:
    if key not in meta or meta[key] is None:
        if default is ...:
            raise _err(p, f"metadata field {key!r} is missing", "re-save the file with adasde")
        return default
    v = meta[key]
    if not isinstance(v, types) or (types is not bool and isinstance(v, bool)):
        raise _err(p, f"metadata field {key!r} has the wrong type: {v!r}", "re-save the file with adasde")
    return v


def from_metadata(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Any) -> Coefficients:
    """Build (and validate) a :class:`Coefficients` from parsed metadata and loaded tensors."""
    p = path
    missing = [k for k in (*TABLES, "sigmas") if k not in tensors]
    if missing:
        raise _err(p, f"missing tensors {missing}", "re-save the file with adasde")
    model = _get(meta, "model", dict, p, {})
    try:
        ident = ModelIdentity(
            family=str(model.get("family", "unknown")), prediction=str(model.get("prediction", "unknown")),
            sigma_min=float(model.get("sigma_min", 0.002)), sigma_max=float(model.get("sigma_max", 80.0)),
            fingerprint=model.get("fingerprint"), name=model.get("name"),
        )
    except (TypeError, ValueError) as exc:
        raise _err(p, f"metadata field 'model' is malformed: {model!r} ({exc})",
                   "re-save the file with adasde") from None
    training = dict(_get(meta, "training", dict, p, {}))
    if meta.get("losses") is not None and "losses" not in training:
        training["losses"] = meta["losses"]
    predictor = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)} or None
    coeffs = Coefficients(
        r=tensors["r"], a=tensors["a"], c=tensors["c"], gamma=tensors["gamma"], w=tensors["w"],
        sigmas=tensors["sigmas"].to(torch.float64),
        schedule=_get(meta, "schedule", str, p), rho=float(_get(meta, "rho", (int, float), p)),
        afs=_get(meta, "afs", bool, p), model=ident, kind=_get(meta, "kind", str, p),
        base=_get(meta, "base", str, p, None), predictor=predictor,
        predictor_config=_get(meta, "predictor_config", dict, p, None), training=training,
        version=int(meta["version"]), source=str(p),
    )
    validate(coeffs, where=p)
    for key, value in (("steps", coeffs.steps), ("K", coeffs.K)):
        if key in meta and meta[key] != value:
            raise _err(p, f"metadata says {key}={meta[key]!r} but the tensors have {key}={value}",
                       "re-save the file with adasde (the header was edited or the file is corrupt)")
    return coeffs


def load(path: str | os.PathLike) -> Coefficients:
    """Read a coefficient file without executing any code and validate it; ``source`` is set to the path."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    _, meta = read_header(p)
    try:
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _err(p, f"unreadable tensor data ({exc})", "re-save or download the file again") from None
    return from_metadata(meta, tensors, p)
