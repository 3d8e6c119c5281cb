"""``edm:FILE.pkl``: NVIDIA EDM network pickles (``edm-cifar10-32x32-uncond-vp.pkl``, ``edm-ffhq-64x64-uncond-vp.pkl``,
``edm-afhqv2-64x64-uncond-vp.pkl``, ``edm-imagenet-64x64-cond-adm.pkl``, and the ``baseline-*`` VP / VE pickles),
read without executing anything from the file.

The files are ``torch_utils.persistence`` pickles of ``dict(ema=net, loss_fn=..., augment_pipe=...,
dataset_kwargs=...)``: every network object is a call ``_reconstruct_persistent_obj(meta)`` whose ``meta`` holds the
class's module source (``module_src``), its ``class_name`` and the ``nn.Module`` state (``_parameters``, ``_buffers``,
``_modules``, the recorded constructor arguments ``_init_args`` / ``_init_kwargs``, plain attributes).  The original
loader ``exec``s ``module_src``; here the restricted unpickler of :mod:`adasde.coefficients.official` turns every such
call into inert data (the source is never executed), plus ``torch.nn`` containers and ``dnnlib`` dicts.  The loader
then accepts only the known EDM classes (preconditioners ``EDMPrecond`` / ``VPPrecond`` / ``VEPrecond``, networks
``SongUNet`` / ``DhariwalUNet`` and their layers), builds OUR modules (:mod:`.networks.edm`) from the recorded
constructor arguments and copies the tensors in.  Any other class or global is refused with one line naming the file
and the class.

Preconditioning (EDM paper, Table 1), D(x; sigma) = c_skip x + c_out F(c_in x; c_noise):

* EDM: c_skip = s_d^2 / (sigma^2 + s_d^2), c_out = sigma s_d / sqrt(sigma^2 + s_d^2), c_in = 1 / sqrt(sigma^2 + s_d^2),
  c_noise = ln(sigma) / 4 (s_d = sigma_data = 0.5);
* VP: c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) t(sigma) with
  t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d;
* VE: c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2).

The sigma range is the network's own clipped to EDM's sampling range [0.002, 80]; the default schedule is
time-uniform rho 1 (the AdaSDE release's pixel-model setting, docs/ALGORITHMS.md section 2).  Class-conditional networks
take ``class_labels`` ([B] class indices, or [B, label_dim] one-hot rows).
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..coefficients.official import PersistentObject, SafeUnpickler, Stub
from ..errors import UsageError
from ..runtime import dtype as _dtype
from .base import Denoiser, ModelSpecError, register_resolver
from .networks import build_and_load
from .networks.edm import LAYERS, NETWORKS

PRECONDS = ("EDMPrecond", "VPPrecond", "VEPrecond")
ALLOWED = set(PRECONDS) | set(NETWORKS) | set(LAYERS)
CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")
SAMPLING_RANGE = (0.002, 80.0)


class _ContainerStub(Stub):
    """Inert stand-in for a pickled ``torch.nn`` container (its state is read as data)."""

    _module = "torch.nn.modules.container"


class EDMUnpickler(SafeUnpickler):
    """:class:`~adasde.coefficients.official.SafeUnpickler` plus ``torch.nn`` containers (inert) and
    ``dnnlib.util.EasyDict`` (read as a plain dict)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.nn.modules.container" and name in CONTAINERS:
            return type(name, (_ContainerStub,), {"_name": name, "__module__": __name__})
        if module == "dnnlib.util" and name == "EasyDict":
            return dict
        return super().find_class(module, name)


def read_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`EDMUnpickler`; one-line :class:`ModelSpecError` when it refuses."""
    if not path.is_file():
        raise ModelSpecError(f"edm:{path}: file not found")
    try:
        with open(path, "rb") as f:
            return EDMUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if msg.startswith("pickle tries to call"):
            raise ModelSpecError(f"refusing to load {path}: the {msg}, which is not part of an NVIDIA EDM network "
                                 "pickle; only load edm-*.pkl / baseline-*.pkl files from the EDM release") from None
        raise ModelSpecError(f"{path}: not a readable EDM pickle ({msg}); download the file again") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError) as exc:
        raise ModelSpecError(f"{path}: not a readable EDM pickle ({type(exc).__name__}: {exc}); download the file "
                             "again") from None


def _state(obj: Any) -> dict[str, Any]:
    st = getattr(obj, "state", None)
    if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):
        st = {**(st[0] or {}), **st[1]}
    return st if isinstance(st, dict) else {}


def _describe(obj: Any) -> str:
    if isinstance(obj, PersistentObject):
        return f"persistent class {obj.class_name!r}"
    if isinstance(obj, Stub):
        return f"class {obj._module}.{obj._name}"
    return f"object of type {type(obj).__name__}"


def collect_tensors(obj: Any, path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flat ``state_dict`` of a stubbed module tree; refuses any module that is not a known EDM class."""
    known = (isinstance(obj, PersistentObject) and obj.class_name in ALLOWED) or isinstance(obj, _ContainerStub)
    if not known:
        raise ModelSpecError(f"refusing to load {path}: {_describe(obj)} at {prefix.rstrip('.') or 'top level'} is "
                             f"not an EDM network class (known: {', '.join(sorted(ALLOWED))})")
    st = _state(obj)
    skip = set(st.get("_non_persistent_buffers_set") or ())
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for k, v in (st.get(group) or {}).items():
            if v is None or k in skip:
                continue
            if not torch.is_tensor(v):
                raise ModelSpecError(f"{path}: {prefix}{k} is a {type(v).__name__}, not a tensor; the file is corrupt")
            out[prefix + k] = v.detach()
    for k, m in (st.get("_modules") or {}).items():
        if m is not None:
            out.update(collect_tensors(m, path, f"{prefix}{k}."))
    return out


def _plain(v: Any) -> Any:
    """numpy scalars / arrays and tuples -> Python values."""
    if hasattr(v, "tolist") and not torch.is_tensor(v):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _init_kwargs(obj: PersistentObject, cls: type, path: Path) -> dict[str, Any]:
    st = _state(obj)
    args, kwargs = st.get("_init_args"), st.get("_init_kwargs")
    if kwargs is None and args is None:
        raise ModelSpecError(f"{path}: {obj.class_name} has no recorded constructor arguments (_init_kwargs); "
                             "re-export the network with EDM's persistence (init-argument recording on)")
    params = [p for p in inspect.signature(cls).parameters if p not in ("self",)]
    bound = dict(zip(params, args or ()))
    bound.update({str(k): _plain(v) for k, v in dict(kwargs or {}).items()})
    unknown = sorted(set(bound) - set(params))
    if unknown:
        raise ModelSpecError(f"{path}: {obj.class_name} has constructor arguments {unknown} that this loader does not "
                             "know; it supports the networks of the EDM release")
    return bound


def _num(st: dict[str, Any], key: str, default: float) -> float:
    v = st.get(key, default)
    return float(v.item() if torch.is_tensor(v) else v)


class EDMDenoiser(Denoiser):
    """An EDM network with its preconditioner as a :class:`~.base.Denoiser` (module docstring)."""

    prediction = "edm"

    def __init__(self, net: nn.Module, precond: str, params: dict[str, float], *, resolution: int, channels: int,
                 label_dim: int, family: str, source: str = ""):
        super().__init__()
        self.net, self.precond, self.params = net, precond, dict(params)
        self.label_dim, self.family, self.source = int(label_dim), family, source
        self.sample_shape = (int(channels), int(resolution), int(resolution))
        if precond == "VPPrecond":
            lo, hi = self.vp_sigma(params["epsilon_t"]), self.vp_sigma(1.0)
        else:
            lo, hi = params.get("sigma_min", 0.0), params.get("sigma_max", math.inf)
        self.sigma_min = max(SAMPLING_RANGE[0], float(lo))
        self.sigma_max = min(SAMPLING_RANGE[1], float(hi))
        self.default_schedule = ("time_uniform", 1.0)

    def vp_sigma(self, t: float) -> float:
        """VP sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        p = self.params
        return math.sqrt(math.expm1(0.5 * p["beta_d"] * t * t + p["beta_min"] * t))

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) for sigma [B] (float64), EDM Table 1."""
        s = sigma.to(torch.float64)
        p = self.params
        if self.precond == "EDMPrecond":
            sd = p["sigma_data"]
            return (sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt(), s.log() / 4)
        if self.precond == "VPPrecond":
            t = ((p["beta_min"] ** 2 + 2 * p["beta_d"] * (s**2).log1p()).sqrt() - p["beta_min"]) / p["beta_d"]
            return torch.ones_like(s), -s, 1 / (s**2 + 1).sqrt(), (p["M"] - 1) * t
        return torch.ones_like(s), s, torch.ones_like(s), (s / 2).log()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Any = None, **extra: Any) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        wdt = next(self.net.parameters()).dtype
        view = (-1,) + (1,) * (x.ndim - 1)
        labels = one_hot_labels(class_labels, self.label_dim, x.shape[0], x.device, self.family)
        # the noise / label embeddings stay float32 (as EDM's fp16 mode); only the feature maps use ``wdt``
        f = self.net((c_in.view(view).to(x.dtype) * x).to(wdt), c_noise.float(), labels)
        self._bottleneck = getattr(self.net, "bottleneck", None)
        return c_skip.view(view).to(x.dtype) * x + c_out.view(view).to(x.dtype) * f.to(x.dtype)


def one_hot_labels(labels: Any, num_classes: int, batch: int, device: torch.device, family: str
                   ) -> torch.Tensor | None:
    """``class_labels`` (an int, [B] indices or [B, num_classes] rows) -> [B, num_classes] float rows; None for
    unconditional models.  A class-conditional model without labels is a :class:`UsageError`."""
    if not num_classes:
        return None
    if labels is None:
        raise UsageError(f"{family} is class-conditional: give class labels (--classes, or "
                         f"extra_args['class_labels'] = class indices 0..{num_classes - 1})")
    t = torch.as_tensor(labels, device=device)
    if t.ndim == 2 and t.shape[1] == num_classes and t.is_floating_point():
        rows = t
    else:
        idx = t.long().reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(batch)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
            raise UsageError(f"{family}: class labels must lie in 0..{num_classes - 1}")
        rows = torch.nn.functional.one_hot(idx, num_classes).float()
    if rows.shape[0] == 1 and batch > 1:
        rows = rows.expand(batch, -1)
    if rows.shape[0] != batch:
        raise UsageError(f"{family}: {rows.shape[0]} class labels for a batch of {batch}")
    return rows


def class_indices(labels: Any, num_classes: int, batch: int, device: torch.device, family: str) -> torch.Tensor:
    """``class_labels`` -> [B] int64 indices (rows of one-hot vectors are reduced by argmax)."""
    return one_hot_labels(labels, num_classes, batch, device, family).argmax(dim=1)


# family = "edm-" + the AdaSDE release's dataset key (as coefficients.import_official names them)
_FAMILIES = (("cifar10", "edm-cifar10"), ("ffhq", "edm-ffhq"), ("afhqv2", "edm-afhqv2"), ("imagenet", "edm-imagenet64"))


def _family(path: Path, resolution: int, label_dim: int) -> str:
    name = path.name.lower()
    for key, fam in _FAMILIES:
        if key in name:
            return fam
    return f"edm-{resolution}x{resolution}{'-cond' if label_dim else ''}"


def _build(net: PersistentObject, path: Path) -> EDMDenoiser:
    """Our network + preconditioner from the stubbed ``ema`` object (recorded arguments, tensors, attributes)."""
    tensors = collect_tensors(net, path)
    st = _state(net)
    inner = (st.get("_modules") or {}).get("model")
    if not (isinstance(inner, PersistentObject) and inner.class_name in NETWORKS):
        raise ModelSpecError(f"refusing to load {path}: {net.class_name}.model is {_describe(inner)}, expected one "
                             f"of {', '.join(NETWORKS)}")
    cls = NETWORKS[inner.class_name]
    kwargs = _init_kwargs(inner, cls, path)
    sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    extra = sorted(k for k in tensors if not k.startswith("model."))
    if extra:
        raise ModelSpecError(f"{path}: unexpected tensors {extra[:4]} on {net.class_name}")
    try:
        module = build_and_load(lambda: cls(**kwargs), sd, str(path),
                                f"{inner.class_name} built from its recorded arguments")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ModelSpecError):
            raise
        raise ModelSpecError(f"{path}: cannot build {inner.class_name} from its recorded arguments ({exc})") from None
    params = {"sigma_data": _num(st, "sigma_data", 0.5), "sigma_min": _num(st, "sigma_min", 0.0),
              "sigma_max": _num(st, "sigma_max", math.inf), "beta_d": _num(st, "beta_d", 19.9),
              "beta_min": _num(st, "beta_min", 0.1), "M": _num(st, "M", 1000), "epsilon_t": _num(st, "epsilon_t", 1e-5)}
    res, ch = int(kwargs["img_resolution"]), int(kwargs["in_channels"])
    label_dim = int(kwargs.get("label_dim", 0) or 0)
    return EDMDenoiser(module, net.class_name, params, resolution=res, channels=ch, label_dim=label_dim,
                       family=_family(path, res, label_dim), source=str(path))


def load_edm_pickle(file: str | os.PathLike, device: torch.device | str | None = None,
                    dtype: torch.dtype | str | None = None) -> EDMDenoiser:
    """An NVIDIA EDM ``.pkl`` as an :class:`EDMDenoiser` (eval mode, no gradients on its weights)."""
    path = Path(file).expanduser()
    data = read_pickle(path)
    net = data.get("ema", data.get("net")) if isinstance(data, dict) else data
    if not (isinstance(net, PersistentObject) and net.class_name in PRECONDS):
        what = "no 'ema' entry" if net is None else _describe(net)
        raise ModelSpecError(f"refusing to load {path}: expected an EDM preconditioned network under 'ema' "
                             f"({', '.join(PRECONDS)}), found {what}")
    try:
        den = _build(net, path)
    except ModelSpecError:
        raise
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as exc:
        raise ModelSpecError(f"{path}: not a well-formed EDM network pickle ({type(exc).__name__}: {exc}); download "
                             "the file again") from None
    den.eval().requires_grad_(False)
    return den.to(device=device or "cpu", dtype=_dtype(dtype) or torch.float32)


def _resolve(rest: str, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
             **kw: Any) -> Denoiser:
    rest = rest.strip()
    if not rest:
        raise ModelSpecError("edm: spec needs a file, e.g. edm:edm-cifar10-32x32-uncond-vp.pkl")
    if kw.get("classifier"):
        raise ModelSpecError(f"edm:{rest}: --classifier is for adm: models (the guided-diffusion classifier)")
    if not re.search(r"\.pkl$", rest, re.IGNORECASE):
        raise ModelSpecError(f"edm:{rest}: expected an NVIDIA EDM network pickle (*.pkl)")
    return load_edm_pickle(rest, device=device, dtype=dtype)


register_resolver("edm", _resolve)
