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
import stat
import struct
from pathlib import Path
from typing import Any

import torch

from ..errors import AdasdeError
from ..fileio import atomic_write_bytes
from ..samplers.schedules import SCHEDULES
from .record import BASES, FORMAT_VERSION, KINDS, PREDICTIONS, Coefficients, ModelIdentity

META_KEY = "adasde"
TABLES = ("r", "a", "c", "gamma", "w")
PREFIX = "predictor."
SCHEDULE_NAMES = (*SCHEDULES, "custom", "learned")  # custom: host sigmas; learned: refined (docs/ALGORITHMS.md 3.9)
SIMPLEX_TOL = 1e-4
# Accepted ranges of the effective coefficients (docs/ALGORITHMS.md sections 3.1 and 3.7): r in (0, 1); a and c in
# (1 - s, 1 + s) with s = min(scale, 0.99), so within (0, 2); gamma in [0, gamma_max] with gamma_max <= 1.  Learned
# values lie far inside (a 0.8-1.12, c 0.99-1.03, gamma <= 1e-3); the bounds are the parameterisation's, generous.
SCALE_MAX = 2.0
GAMMA_MAX = 1.0
_MAX_HEADER = 64 * 1024 * 1024


class CoefficientFileError(AdasdeError, ValueError):
    """A coefficient file is missing, unreadable or invalid; the message names the file, the value and the fix."""


class CheckpointFileError(CoefficientFileError):
    """The file is a distillation checkpoint (``adasde distill`` writes it beside ``--out``), not coefficients."""


CHECKPOINT_KEY = "adasde_checkpoint"  # header metadata key of distill/checkpoint.py


def _err(path: Any, what: str, fix: str) -> CoefficientFileError:
    return CoefficientFileError(f"coefficient file {path}: {what}. Fix: {fix}")


# ------------------------------------------------------------------------------------------------------- header
_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_MAX_FILE = 1 << 30  # coefficient files are kilobytes (an AMED predictor: a few MB); anything larger is not ours
_REGEN = "re-save it with adasde (coefficients.save / `adasde distill`) or download it again"


def _is_int(v: Any) -> bool:
    return type(v) is int


def _finite_number(v: Any) -> bool:
    """A JSON number that converts to a finite float (huge JSON integers overflow float())."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _parse_header(p: Path, f: Any, size: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(tensor table, ``"adasde"`` metadata, header length) read from the open file ``f`` of ``size`` bytes.

    Every field is type- and range-checked before use, so malformed input of any kind ends in
    :class:`CoefficientFileError` (never another exception type) and nothing is allocated beyond the file size.
    """
    head = f.read(8)
    if len(head) < 8:
        raise _err(p, f"not a safetensors file ({size} bytes, no header)", _REGEN)
    (n,) = struct.unpack("<Q", head)
    if n < 2 or n > _MAX_HEADER:
        raise _err(p, f"not a safetensors file (header length {n})", _REGEN)
    if 8 + n > size:
        raise _err(p, f"truncated file: header needs {8 + n} bytes but the file has {size}", _REGEN)
    raw = f.read(n)
    if len(raw) != n:
        raise _err(p, f"truncated file: header needs {8 + n} bytes but only {8 + len(raw)} could be read", _REGEN)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:120]
        raise _err(p, f"not a safetensors file (header is not JSON: {why})", _REGEN) from None
    if not isinstance(header, dict):
        raise _err(p, "not a safetensors file (header is not a JSON object)", _REGEN)
    meta_all = header.pop("__metadata__", None) or {}
    spans = []
    for name, info in header.items():
        ok = (isinstance(info, dict) and isinstance(info.get("shape"), list)
              and isinstance(info.get("dtype"), str) and info["dtype"] in _DTYPES
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(_is_int(v) and 0 <= v <= size for v in info["data_offsets"])
              and all(_is_int(v) and 0 <= v <= size for v in info["shape"]) and len(info["shape"]) <= 8)
        if ok:
            lo, hi = info["data_offsets"]
            ok = lo <= hi and hi - lo == math.prod(info["shape"]) * _DTYPES[info["dtype"]]
        if not ok:
            raise _err(p, f"malformed safetensors entry for tensor {str(name)[:80]!r}: {str(info)[:200]}", _REGEN)
        spans.append((lo, hi))
    end = 0
    for lo, hi in sorted(spans):
        if lo != end:
            raise _err(p, f"malformed safetensors file: tensor data overlaps or has a gap at byte {lo}", _REGEN)
        end = hi
    if 8 + n + end != size:
        what = "truncated file" if 8 + n + end > size else "trailing bytes after the tensor data"
        raise _err(p, f"{what}: header and tensors need {8 + n + end} bytes but the file has {size}", _REGEN)
    if isinstance(meta_all, dict) and CHECKPOINT_KEY in meta_all and META_KEY not in meta_all:
        raise CheckpointFileError(f"coefficient file {p}: a distillation checkpoint, not a coefficient file. Fix: "
                                  f"pass the --out file of `adasde distill`, or --resume from this checkpoint")
    if not isinstance(meta_all, dict) or META_KEY not in meta_all:
        raise _err(p, f"no {META_KEY!r} metadata (a plain safetensors file, e.g. model weights, not coefficients)",
                   "pass an adasde coefficient file (written by coefficients.save / `adasde distill`)")
    try:
        meta = json.loads(meta_all[META_KEY])
    except (TypeError, ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:120]
        raise _err(p, f"the {META_KEY!r} metadata is not valid JSON ({why})", _REGEN) from None
    if not isinstance(meta, dict):
        raise _err(p, f"the {META_KEY!r} metadata is not a JSON object: {str(meta)[:80]}", _REGEN)
    if isinstance(meta.get("format"), str) or not any(k in header for k in (*TABLES, "sigmas")):
        what = f"format {meta['format']!r}" if isinstance(meta.get("format"), str) else "no coefficient tables"
        raise _err(p, f"a model weights file ({what}, {len(header)} tensors), not a coefficient file",
                   "pass a coefficient file (`adasde coefficients list`, or write one with `adasde distill`)")
    version = meta.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise _err(p, f"unknown format version {str(version)[:40]} (this adasde reads version {FORMAT_VERSION})",
                   "upgrade adasde (pip install -U adasde / update the extension), or re-export the file")
    _check_meta_types(p, meta)
    return header, meta, n


def _check_meta_types(p: Any, meta: dict[str, Any]) -> None:
    """The header fields lookups and hosts read directly must have their documented JSON types."""
    def bad(key: str, v: Any, want: str) -> CoefficientFileError:
        return _err(p, f"metadata field {key!r} must be {want}, got {str(v)[:80]!r}", "re-save the file with adasde")

    for key in ("kind", "schedule"):
        if meta.get(key) is None:
            raise _err(p, f"metadata field {key!r} is missing", "re-save the file with adasde")
        if not isinstance(meta.get(key), str):
            raise bad(key, meta.get(key), "a string")
    for key in ("steps", "K", "nfe"):
        v = meta.get(key)
        if v is not None and not (_is_int(v) and 0 <= v < 1 << 31):
            raise bad(key, v, "a non-negative integer")
    if meta.get("base") is not None and not isinstance(meta["base"], str):
        raise bad("base", meta["base"], "a string or null")
    model = meta.get("model")
    if model is None:
        return
    if not isinstance(model, dict):
        raise bad("model", model, "an object with family, prediction, sigma_min, sigma_max")
    for key in ("family", "prediction", "name", "fingerprint"):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise bad(f"model.{key}", model[key], "a string")
    for key in ("sigma_min", "sigma_max"):
        v = model.get(key)
        if v is not None and not (_finite_number(v) and v > 0):
            raise bad(f"model.{key}", v, "a positive finite number")


def _open_checked(path: str | os.PathLike) -> tuple[Path, Any, int]:
    p = Path(path)
    try:
        if p.exists() and not p.is_file():  # a folder, FIFO or device: opening a FIFO would block
            raise _err(p, "not a regular file", "pass a .safetensors coefficient file")
        f = open(p, "rb")  # noqa: SIM115 - closed by the callers
    except FileNotFoundError:
        raise _err(p, "no such file", "check the path, or put coefficient files in one of the searched folders") \
            from None
    except OSError as exc:
        raise _err(p, f"cannot be opened ({exc.strerror or exc})", "check the path and its permissions") from None
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _err(p, "not a regular file", "pass a .safetensors coefficient file")
        if st.st_size > _MAX_FILE:
            raise _err(p, f"{st.st_size} bytes is far too large for a coefficient file (model weights?)",
                       "pass an adasde coefficient file (written by coefficients.save / `adasde distill`)")
    except BaseException:
        f.close()
        raise
    return p, f, st.st_size


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor table, parsed ``"adasde"`` metadata) of a coefficient file, reading only its header.

    Checks that the file is a complete, well-formed safetensors file carrying our metadata with a known format
    version and correctly typed lookup fields.  Does not load tensor data.  Any problem raises
    :class:`CoefficientFileError`.
    """
    p, f, size = _open_checked(path)
    with f:
        try:
            header, meta, _ = _parse_header(p, f, size)
        except OSError as exc:
            raise _err(p, f"read error ({exc.strerror or exc})", _REGEN) from None
    return header, meta


# ------------------------------------------------------------------------------------------------- validation
def _finite(p: Any, name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = t[~torch.isfinite(t)].flatten()[:3].tolist()
        raise _err(p, f"{name} contains non-finite values {bad}", "re-distil the coefficients (training diverged)")


def validate(coeffs: Coefficients, where: Any = None) -> None:
    """Raise :class:`CoefficientFileError` unless ``coeffs`` is consistent (shapes, ranges, names; docs/ALGORITHMS.md
    sections 3.1 and 4.1): r in (0, 1), a and c in (0, 2], gamma in [0, 1], rows of w on the simplex,
    ``steps + 1`` positive strictly decreasing sigmas, known kind / base / schedule / prediction."""
    p = where if where is not None else (coeffs.source or "<in memory>")
    redo = "re-distil or re-export the coefficients"
    if coeffs.kind not in KINDS:
        raise _err(p, f"unknown kind {coeffs.kind!r}", f"use one of {', '.join(KINDS)}")
    if coeffs.kind == "amed_plugin" and coeffs.base not in BASES:
        raise _err(p, f"unknown AMED-Plugin base solver {coeffs.base!r}", f"use one of {', '.join(BASES)}")
    if coeffs.schedule not in SCHEDULE_NAMES:
        raise _err(p, f"unknown schedule {coeffs.schedule!r}", f"use one of {', '.join(SCHEDULE_NAMES)}")
    if not (_finite_number(coeffs.rho) and coeffs.rho > 0):
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
    checks = (("r", r, (r > 0) & (r < 1), "in (0, 1)"),
              ("a", a, (a > 0) & (a <= SCALE_MAX), f"> 0 and <= {SCALE_MAX:g} (1 +- the time scale)"),
              ("c", c, (c > 0) & (c <= SCALE_MAX), f"> 0 and <= {SCALE_MAX:g} (1 +- the direction scale)"),
              ("gamma", g, (g >= 0) & (g <= GAMMA_MAX), f">= 0 and <= {GAMMA_MAX:g} (gamma <= gamma_max <= 1)"),
              ("w", w, w >= 0, ">= 0"))
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
    _check_amed(p, coeffs, redo)


def _check_amed(p: Any, coeffs: Coefficients, redo: str) -> None:
    """AMED predictor weights must rebuild the network of docs/ALGORITHMS.md section 4.1 from their config; AMED-Plugin
    solver options must be a valid solver form of the base (section 4.3); other kinds carry neither."""
    from ..samplers.amed import AMEDPredictor, plugin_solver

    if coeffs.predictor:
        if coeffs.kind not in ("amed", "amed_plugin"):
            raise _err(p, f"kind {coeffs.kind!r} carries AMED predictor weights ('predictor.*')", redo)
        cfg = coeffs.predictor_config
        if cfg is not None and not isinstance(cfg, dict):
            raise _err(p, f"predictor_config must be an object, got {str(cfg)[:80]!r}", redo)
        shape = lambda k, i: tuple(coeffs.predictor[k].shape)[i] if k in coeffs.predictor else None  # noqa: E731
        implied = {"hidden": shape("enc1.weight", 0), "bottleneck_dim": shape("enc1.weight", 1),
                   "feat_dim": shape("enc2.weight", 0), "emb_dim": shape("time_layer.weight", 0)}
        for key, size in implied.items():  # sizes come from the tensors, never from the header alone
            if key in (cfg or {}) and cfg[key] != size:
                raise _err(p, f"predictor_config {key}={str(cfg[key])[:40]} does not match the predictor weights "
                           f"({size})", redo)
        try:
            AMEDPredictor.from_state(coeffs.predictor_config, coeffs.predictor)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise _err(p, f"the AMED predictor does not load: {str(exc).splitlines()[0][:200]}", redo) from None
    opts = coeffs.solver_options
    if opts is None:
        return
    if coeffs.kind != "amed_plugin":
        raise _err(p, f"kind {coeffs.kind!r} carries AMED-Plugin solver_options", redo)
    if not isinstance(opts, dict):
        raise _err(p, f"solver_options must be an object, got {str(opts)[:80]!r}", redo)
    try:
        plugin_solver(str(coeffs.base), opts)
    except ValueError as exc:
        raise _err(p, f"solver_options {str(opts)[:120]}: {exc}", redo) from None


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
        "solver_options": coeffs.solver_options,
    })


def save(coeffs: Coefficients, path: str | os.PathLike) -> Path:
    """Validate and write ``coeffs`` to ``path`` (``.safetensors``) atomically (tmp file in the same folder, then
    ``os.replace``).  Returns the path."""
    from safetensors.torch import save as save_bytes

    p = Path(path)
    validate(coeffs, where=p)
    tensors = {k: getattr(coeffs, k).detach().to("cpu", torch.float32).contiguous() for k in TABLES}
    tensors["sigmas"] = coeffs.sigmas.detach().to("cpu", torch.float64).contiguous()
    for name, t in (coeffs.predictor or {}).items():
        tensors[PREFIX + name] = t.detach().cpu().contiguous()
    meta = {META_KEY: json.dumps(to_metadata(coeffs), sort_keys=True, allow_nan=False)}
    return atomic_write_bytes(p, save_bytes(tensors, metadata=meta))


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
        schedule=_get(meta, "schedule", str, p), rho=_get(meta, "rho", (int, float), p),
        afs=_get(meta, "afs", bool, p), model=ident, kind=_get(meta, "kind", str, p),
        base=_get(meta, "base", str, p, None), predictor=predictor,
        predictor_config=_get(meta, "predictor_config", dict, p, None),
        solver_options=_get(meta, "solver_options", dict, p, None), training=training,
        version=int(meta["version"]), source=str(p),
    )
    validate(coeffs, where=p)
    coeffs.rho = float(coeffs.rho)
    for key, value in (("steps", coeffs.steps), ("K", coeffs.K)):
        if key in meta and meta[key] != value:
            raise _err(p, f"metadata says {key}={meta[key]!r} but the tensors have {key}={value}",
                       "re-save the file with adasde (the header was edited or the file is corrupt)")
    return coeffs


def load(path: str | os.PathLike) -> Coefficients:
    """Read a coefficient file without executing any code and validate it; ``source`` is set to the path.

    Header and tensors come from one open file (one snapshot of its bytes), so a concurrent ``os.replace`` by a
    writer can never mix one file's settings with another's tensors.
    """
    from safetensors.torch import load as load_bytes

    p, f, size = _open_checked(path)
    with f:
        try:
            _, meta, n = _parse_header(p, f, size)
            f.seek(0)
            data = f.read(size)
        except OSError as exc:
            raise _err(p, f"read error ({exc.strerror or exc})", _REGEN) from None
    if len(data) != size:
        raise _err(p, f"the file changed size while being read ({size} -> {len(data)} bytes)", "read it again")
    try:
        tensors = load_bytes(data)
    except Exception as exc:  # noqa: BLE001 - safetensors reports malformed input with several exception types
        raise _err(p, f"unreadable tensor data ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
                   "re-save or download the file again") from None
    return from_metadata(meta, tensors, p)
