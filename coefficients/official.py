"""Importing the official AdaSDE ``network-snapshot-*.pkl`` predictors without running their code.

The files are EDM-persistence pickles of ``dict(model=adasde_predictor, loss_fn=...)`` (docs/ALGORITHMS.md
section 3.6) that embed class source code which the original loader executes.  :class:`SafeUnpickler`
resolves only a whitelist of globals (torch tensor/storage rebuild functions, dtypes and devices, numpy arrays and
scalars, ``collections.OrderedDict``, builtin containers) and turns every ``torch_utils.*``, ``training.*``,
``solvers.*`` and ``dnnlib.*`` object, and the parameter-free ``torch.nn`` activation modules and containers that the
predictors hold, into an inert :class:`Stub` that records its state; anything else is refused before it can run.
The raw tables are mapped to effective values with the section 3.1 mappings.
"""

from __future__ import annotations

import builtins
import io
import math
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..samplers.schedules import get_sigmas
from .io import CoefficientFileError
from .record import Coefficients, ModelIdentity

STUB_PREFIXES = ("torch_utils", "training", "solvers", "dnnlib")
GAMMA_MIN_PICKLE = 1e-4  # gamma floor carried by the released pickles (docs/ALGORITHMS.md section 3.6)
GAMMA_BIAS = 2 * math.log(0.6 / 0.4)  # section 3.1: gamma = g_min + (g_max - g_min) sigmoid((raw + b) / 2)
_CONTAINERS = {"dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float", "bool",
               "complex", "slice", "range", "object"}
_TORCH_REBUILD = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
MAX_OBJECT_BYTES = 256 << 20  # a predictor pickle holds a few small tables; any single object beyond this is refused
_SIZED = {"bytearray", "bytes", "list", "tuple", "set", "frozenset", "dict"}  # constructors that can allocate
_DTYPE_NAMES = {"float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16", "int32",
                "int64", "uint8", "bool", "long", "int", "short"}
# ``torch.nn`` modules the released predictors hold in ``_modules`` (parameter-free activations) and the containers
# that would group them; each becomes an inert :class:`Stub` (``NEWOBJ`` + ``BUILD`` record the state, no torch code
# runs).  Modules with weights of their own (``Linear``, convolutions, ...) stay refused.
_NN_INERT = {
    "torch.nn.modules.activation": {"Sigmoid", "Softmax", "LogSoftmax", "Softmin", "Softplus", "Tanh", "ReLU",
                                    "LeakyReLU", "SiLU", "GELU", "ELU", "Mish", "Hardtanh", "Hardsigmoid",
                                    "Hardswish"},
    "torch.nn.modules.container": {"Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"},
    "torch.nn.modules.linear": {"Identity"},
}


class Stub:
    """Inert stand-in for a class or object of the original code base: records its name, arguments and state."""

    _module = "?"
    _name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self._module}.{self._name}>"


# the release's dataset names -> the family our loaders give the same model (so imported files match by family)
DATASET_FAMILIES = {"cifar10": "edm-cifar10", "ffhq": "edm-ffhq", "afhqv2": "edm-afhqv2",
                    "imagenet64": "edm-imagenet64", "lsun_bedroom": "cm-lsun_bedroom", "imagenet256": "adm-imagenet256",
                    "lsun_bedroom_ldm": "ldm", "ms_coco": "sd15"}

def _stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"_module": module, "_name": name, "__module__": "adasde.coefficients.official"})


class PersistentObject(Stub):
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` would have rebuilt, left as data: the class
    name, its embedded source (never executed) and its pickled state."""

    def __init__(self, meta: Any) -> None:
        super().__init__()
        meta = meta if isinstance(meta, dict) else {}
        self._module = "torch_utils.persistence"
        self._name = str(meta.get("class_name", "?"))
        self.class_name = self._name
        self.source = meta.get("module_src")
        self.state = meta.get("state")


def _safe_storage_from_bytes(b: bytes) -> torch.storage.TypedStorage:
    """Rebuild the storage of a pickled tensor from its legacy ``torch.save`` bytes (magic, protocol, sys info,
    object pickle with one storage id, key list, raw data) with the restricted unpickler; no ``torch.load``."""
    with warnings.catch_warnings():  # TypedStorage deprecation notices
        warnings.simplefilter("ignore")
        return _storage_from_bytes(bytes(b))


def _storage_from_bytes(b: bytes) -> torch.storage.TypedStorage:
    f = io.BytesIO(b)
    for _ in range(3):  # magic number, protocol version, system info: plain data
        _RestrictedData(f).load()
    ids: list[tuple[Any, ...]] = []
    obj_unpickler = _RestrictedData(f)
    obj_unpickler.persistent_load = lambda pid: ids.append(pid) or len(ids) - 1  # type: ignore[method-assign]
    obj_unpickler.load()
    keys = _RestrictedData(f).load()
    if len(ids) != 1 or not isinstance(keys, list) or len(keys) != 1:
        raise pickle.UnpicklingError("unexpected storage layout")
    _, storage_type, _key, _location, numel, _view = ids[0]
    storage_type = getattr(storage_type, "cls", storage_type)
    dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
    size = int.from_bytes(f.read(8), "little")
    esize = torch.empty((), dtype=dtype).element_size()
    if size != numel or size < 0:
        raise pickle.UnpicklingError("storage size mismatch")
    _refuse_size("tensor storage", size * esize)
    data = f.read(size * esize)
    if len(data) != size * esize:
        raise pickle.UnpicklingError("truncated storage data")
    if data:
        untyped = torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage()
    else:
        untyped = torch.UntypedStorage(0)
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


class AllocationError(pickle.UnpicklingError):
    """A pickle asked for an object larger than :data:`MAX_OBJECT_BYTES` (checked before allocating it)."""


def _refuse_size(what: str, nbytes: int) -> None:
    if nbytes > MAX_OBJECT_BYTES:
        raise AllocationError(f"object too large: {what} of {nbytes} bytes (limit {MAX_OBJECT_BYTES})")


def _sized_len(arg: Any) -> int:
    """Items an iterable argument would produce, for the lazy ones that cost nothing to hold (range); else 0."""
    return len(arg) if isinstance(arg, range) else 0


def _bounded_builtin(name: str) -> Any:
    """``builtins.<name>`` with its size checked from the arguments before it allocates."""
    real = getattr(builtins, name)

    def make(*args: Any, **kw: Any) -> Any:
        if args:
            a = args[0]
            if isinstance(a, int) and not isinstance(a, bool) and name in ("bytes", "bytearray"):
                _refuse_size(f"{name}({a})", a)
            _refuse_size(f"{name}(range of {_sized_len(a)})", 8 * _sized_len(a))
        return real(*args, **kw)

    make.__name__ = name
    return make


class _BoundedStorage:
    """A torch storage class as found in a pickle: usable as a type tag, and callable only for bounded sizes."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.dtype = getattr(cls, "dtype", torch.uint8)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if args and isinstance(args[0], int):
            esize = torch.empty((), dtype=self.dtype).element_size() if isinstance(self.dtype, torch.dtype) else 1
            _refuse_size(f"{self.cls.__name__}({args[0]})", args[0] * esize)
        return self.cls(*args, **kw)


def _bounded_reconstruct(real: Any) -> Any:
    """numpy's ``_reconstruct(subtype, shape, dtype)`` with the array size checked before allocation."""
    import numpy as np

    def make(subtype: Any, shape: Any, dtype: Any = float, *args: Any, **kw: Any) -> Any:
        try:
            dims = [int(v) for v in (shape if isinstance(shape, (tuple, list)) else (shape,))]
            nbytes = math.prod(dims) * np.dtype(dtype).itemsize
        except (TypeError, ValueError) as exc:
            raise pickle.UnpicklingError(f"bad numpy array header ({exc})") from None
        _refuse_size(f"numpy array {dims}", nbytes)
        return real(getattr(subtype, "cls", subtype), shape, dtype, *args, **kw)

    return make


class _BoundedNdarray:
    """``numpy.ndarray`` as found in a pickle: a type tag for ``_reconstruct``; called, its size is checked first."""

    def __init__(self) -> None:
        import numpy as np

        self.cls = np.ndarray
        self._make = _bounded_reconstruct(lambda subtype, shape, dtype, *a, **kw: np.ndarray(shape, dtype, *a, **kw))

    def __call__(self, shape: Any, dtype: Any = float, *args: Any, **kw: Any) -> Any:
        return self._make(self.cls, shape, dtype, *args, **kw)


def _allowed_torch(module: str, name: str) -> Any:
    if module == "torch._utils" and name in _TORCH_REBUILD:
        return getattr(torch._utils, name)
    if module == "torch.storage" and name == "_load_from_bytes":
        return _safe_storage_from_bytes
    if module in ("torch", "torch.storage") and (name.endswith("Storage") or name in _DTYPE_NAMES):
        obj = getattr(torch, name, None)
        if isinstance(obj, type) and name.endswith("Storage"):
            return _BoundedStorage(obj)
        if isinstance(obj, torch.dtype):
            return obj
    if module == "torch.nn.parameter" and name == "Parameter":
        return torch.nn.Parameter
    if module == "torch" and name in ("Size", "device"):
        return getattr(torch, name)
    return None


def _allowed_numpy(module: str, name: str) -> Any:
    """numpy arrays and scalars (plain data; object arrays still go through the restricted ``find_class``)."""
    if module not in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        return None
    import numpy as np

    multiarray = (getattr(np, "_core", None) or np.core).multiarray
    table = {"_reconstruct": _bounded_reconstruct(multiarray._reconstruct), "scalar": multiarray.scalar,
             "ndarray": _BoundedNdarray(),
             "dtype": np.dtype}
    return table.get(name)


class _RestrictedData(pickle.Unpickler):
    """Unpickler for plain data and torch tensors only."""

    stub_prefixes: tuple[str, ...] = ()

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)  # protocol 0-2 pickles name the Python 2 modules
        if module == "builtins" and name in _CONTAINERS:
            return _bounded_builtin(name) if name in _SIZED else getattr(builtins, name)
        if module == "copyreg" and name == "_reconstructor":
            return _safe_reconstructor
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        obj = _allowed_torch(module, name)
        if obj is None:
            obj = _allowed_numpy(module, name)
        if obj is not None:
            return obj
        if self.stub_prefixes and name in _NN_INERT.get(module, ()):
            return _stub_class(module, name)
        if module.split(".")[0] in self.stub_prefixes:
            if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
                return PersistentObject
            return _stub_class(module, name)
        raise pickle.UnpicklingError(f"pickle tries to call {module}.{name}")


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects) restricted to inert stubs."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise pickle.UnpicklingError(f"pickle tries to call copyreg._reconstructor on {cls!r}")
    return cls.__new__(cls)


def _latin1_encode(s: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; only latin-1."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"pickle tries to call _codecs.encode with encoding {encoding!r}")
    return s.encode("latin1")


class SafeUnpickler(_RestrictedData):
    """Restricted unpickler for official predictor pickles: whitelist plus inert stubs (see module docstring)."""

    stub_prefixes = STUB_PREFIXES


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`; raises :class:`CoefficientFileError` when it refuses."""
    p = Path(path)
    if not p.is_file():
        raise CoefficientFileError(f"official predictor {p}: no such file. Fix: check the path "
                                   "(network-snapshot-*.pkl from the AdaSDE exps/ folders)")
    try:
        with open(p, "rb") as f:
            return SafeUnpickler(f).load()
    except AllocationError as exc:
        raise CoefficientFileError(f"refusing to load {p}: {exc}; an AdaSDE predictor holds a few small tables. "
                                   "Fix: only import network-snapshot-*.pkl files from the official AdaSDE "
                                   "repository") from None
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if msg.startswith("pickle tries to call"):
            raise CoefficientFileError(f"refusing to load {p}: {msg}, which is not part of an AdaSDE predictor. "
                                       "Fix: only import network-snapshot-*.pkl files from the official AdaSDE "
                                       "repository") from None
        raise CoefficientFileError(f"official predictor {p}: not a readable pickle ({msg}). Fix: download the "
                                   "file again") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError) as exc:
        raise CoefficientFileError(f"official predictor {p}: not a readable pickle ({type(exc).__name__}: {exc}). "
                                   "Fix: download the file again") from None


def _state_dict(obj: Any) -> dict[str, Any]:
    """Flat attribute view of a stubbed ``nn.Module``: its attributes, ``_parameters`` and ``_buffers``."""
    state = getattr(obj, "state", None)
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slotstate)
        state = {**(state[0] or {}), **state[1]}
    if not isinstance(state, dict):
        return {}
    flat = {k: v for k, v in state.items() if not k.startswith("_")}
    for sub in ("_buffers", "_parameters"):
        flat.update({k: v for k, v in (state.get(sub) or {}).items() if v is not None})
    return flat


def _num(x: Any) -> float:
    return float(x.item() if torch.is_tensor(x) else x)


def _attr(where: Any, name: str, default: float, *states: dict[str, Any]) -> float:
    """The pickled number ``name`` from the first state that has it (``None`` counts as absent), else ``default``;
    anything that is not one number is refused with one line."""
    for state in states:
        value = state.get(name)
        if value is None:
            continue
        try:
            out = _num(value)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            out = math.nan
        if isinstance(value, str) or not math.isfinite(out):
            raise CoefficientFileError(f"official predictor {where}: attribute {name} is {type(value).__name__} "
                                       f"{str(value)[:40]!r}, not a finite number. Fix: the file is corrupt or not "
                                       "an AdaSDE predictor; download it again")
        return out
    return default


def decode_predictor(state: dict[str, Any], where: Any = "<state>") -> dict[str, Any]:
    """Effective ``r, a, c, gamma, w`` from the raw tables (docs/ALGORITHMS.md section 3.1):
    r = sigmoid(raw); c = 1 + min(s_c, .99) tanh(raw/2); a = 1 + min(s_a, .99) tanh(raw/2);
    gamma = g_min + (g_max - g_min) sigmoid((raw + 2 ln 1.5) / 2); w = softmax_k(raw); a flag of 0 disables the
    quantity (c = a = 1, gamma = 0); with ``fcn`` the last step's c is 1."""
    if "r_params" not in state:
        raise CoefficientFileError(f"official predictor {where}: no r_params table (not an AdaSDE predictor). "
                                   "Fix: pass a network-snapshot-*.pkl of an AdaSDE run")

    def table(name: str, like: torch.Tensor) -> torch.Tensor:
        t = state.get(name)
        if t is None:
            return torch.zeros_like(like)
        t = torch.as_tensor(t.detach() if torch.is_tensor(t) else t, dtype=torch.float64)
        if t.shape != like.shape:
            raise CoefficientFileError(f"official predictor {where}: {name} has shape {list(t.shape)}, r_params "
                                       f"{list(like.shape)}. Fix: the file is corrupt; download it again")
        return t

    raw_r = torch.as_tensor(state["r_params"].detach(), dtype=torch.float64)
    if raw_r.ndim == 1:
        raw_r = raw_r[:, None]
    r = torch.sigmoid(raw_r)
    s_c, s_a = _attr(where, "scale_dir", 0.0, state), _attr(where, "scale_time", 0.0, state)
    c = 1 + min(s_c, 0.99) * torch.tanh(table("scale_dir_params", raw_r) / 2) if s_c else torch.ones_like(r)
    a = 1 + min(s_a, 0.99) * torch.tanh(table("scale_time_params", raw_r) / 2) if s_a else torch.ones_like(r)
    g_max = _attr(where, "gamma", _attr(where, "gamma_max", 0.0, state), state)
    g_min = _attr(where, "gamma_min", GAMMA_MIN_PICKLE, state)
    if g_max:
        gamma = g_min + (g_max - g_min) * torch.sigmoid((table("gamma_params", raw_r) + GAMMA_BIAS) / 2)
    else:
        gamma = torch.zeros_like(r)
    w = torch.softmax(table("weight_s", raw_r), dim=-1) if "weight_s" in state else torch.full_like(r, 1 / r.shape[1])
    if state.get("fcn"):
        c[-1] = 1.0
    return {"r": r, "a": a, "c": c, "gamma": gamma, "w": w, "gamma_min": g_min, "gamma_max": g_max,
            "scale_dir": s_c, "scale_time": s_a}


def _find_predictor(obj: Any) -> Any:
    if isinstance(obj, dict):
        for key in ("model", "net", "predictor"):
            if key in obj:
                return obj[key]
    return obj


def import_official(path: str | os.PathLike) -> Coefficients:
    """Coefficients from an official AdaSDE ``network-snapshot-*.pkl`` (docs/ALGORITHMS.md section 3.6), read with
    :class:`SafeUnpickler` (no code from the file runs).  The grid comes from ``samplers.schedules.get_sigmas`` with
    the pickled schedule type, rho, num_steps and sigma range (the predictor's, else the pickled loss object's, which
    the release's training loop sets from the teacher model; else the EDM default 0.002 .. 80)."""
    p = Path(path)
    data = safe_load_pickle(p)
    model = _find_predictor(data)
    state = _state_dict(model)
    loss_state = _state_dict(data.get("loss_fn")) if isinstance(data, dict) else {}
    if not state:
        raise CoefficientFileError(f"official predictor {p}: no predictor state found (got {type(model).__name__}). "
                                   "Fix: pass a network-snapshot-*.pkl of an AdaSDE run")
    eff = decode_predictor(state, p)
    steps = eff["r"].shape[0]
    n = int(_attr(p, "num_steps", steps + 1, state))
    if n != steps + 1:
        raise CoefficientFileError(f"official predictor {p}: num_steps={n} but the tables have {steps} rows. "
                                   "Fix: the file is corrupt; download it again")
    schedule = str(state.get("schedule_type", "time_uniform"))
    rho = _attr(p, "schedule_rho", 1.0, state)
    smin = _attr(p, "sigma_min", 0.002, state, loss_state)
    smax = _attr(p, "sigma_max", 80.0, state, loss_state)
    try:
        sigmas = get_sigmas(schedule, n, smin, smax, rho, dtype=torch.float64)
    except ValueError as exc:
        raise CoefficientFileError(f"official predictor {p}: cannot rebuild its grid ({exc}). Fix: only "
                                   "time_uniform / polynomial / logsnr predictors can be imported") from None
    dataset = str(state.get("dataset_name", "unknown"))
    family = DATASET_FAMILIES.get(dataset.lower(), f"edm-{dataset}" if dataset != "unknown" else "unknown")
    kimg = re.search(r"network-snapshot-(\d+)", p.name)
    extra = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in state.items()
             if isinstance(v, (int, float, str, bool)) or (torch.is_tensor(v) and v.numel() == 1)}
    training = {
        "source": "official AdaSDE predictor", "file": p.name, "kimg": int(kimg.group(1)) if kimg else None,
        "gamma_min": eff["gamma_min"], "gamma_max": eff["gamma_max"], "scale_dir": eff["scale_dir"],
        "scale_time": eff["scale_time"], "dataset_name": dataset, "class_name": getattr(model, "class_name", None),
        "pickled_attributes": extra,
    }
    coeffs = Coefficients(
        r=eff["r"].float(), a=eff["a"].float(), c=eff["c"].float(), gamma=eff["gamma"].float(), w=eff["w"].float(),
        sigmas=sigmas, schedule=schedule, rho=rho, afs=bool(state.get("afs", False)),
        model=ModelIdentity(family=family, prediction="edm", sigma_min=smin, sigma_max=smax, name=dataset),
        kind="adasde", training=training, source=str(p),
    )
    from .io import validate

    validate(coeffs, where=p)
    return coeffs
