"""AMED-Solver and AMED-Plugin (CVPR 2024; docs/ALGORITHMS.md section 4).

The predictor g_phi (section 4.1) maps the U-Net bottleneck of the model call at t_n plus t_n, t_{n+1} to per-sample
(r, c, a); AMED-Solver (section 4.2) is then one AdaSDE step with gamma = 0 and K = 1 (:func:`adasde.adasde_points`),
the plugin (section 4.3) inserts the point s = t_{n+1}^r t_n^{1-r} into another solver's grid.  Without a predictor
both run in *constant* mode from per-step tables (a ``Coefficients`` record; none = r 0.5, c = a = 1).

``features``: a callable supplied by the host adapter that returns the bottleneck feature map ``[B, C, h, w]`` of the
most recent model call (or None, meaning zeros).  NFE = 2 (N - 1) - [AFS] (+1 with a trailing 0) for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .adasde import adasde_points, resolve_tables
from .baselines import ab_direction, dpm2_step, dpmpp_weights, dynamic_threshold
from .common import (
    afs_denoised,
    axpy,
    bcast,
    inserted_point,
    is_flow_model,
    lincomb,
    model_sigma,
    prepare_grid,
    run_steps,
)

PLUGIN_BASES = ("euler", "dpm_2", "ipndm", "dpmpp")
DEFAULT_MAX_ORDER = {"ipndm": 4, "dpmpp": 3}  # the AMED reference's defaults
ORDER_LIMIT = {"ipndm": 4, "dpmpp": 3}
SOLVER_KEYS = ("max_order", "predict_x0", "lower_order_final", "taylor_d2", "thresholding")
Features = Callable[[], torch.Tensor | None]


def plugin_solver(base: str, stored: dict[str, Any] | None = None, **given: Any) -> dict[str, Any]:
    """The solver form of an AMED-Plugin base (docs/ALGORITHMS.md section 4.7): each of :data:`SOLVER_KEYS` from
    ``given`` (not None), else from ``stored`` (the form a coefficient file was trained with), else the AMED
    reference's default: max_order 4 (ipndm) / 3 (dpmpp), data prediction, lower-order-final on for dpmpp only, the
    reference's -phi_3 D2 term, and dynamic thresholding exactly when the dpmpp base runs in data-prediction mode
    (the reference thresholds every data prediction there; noise-prediction mode, the reference's LDM / SD setting,
    has nothing to threshold).  Keys that do not apply to ``base`` are None.  Raises ValueError on a bad value."""
    if base not in PLUGIN_BASES:
        raise ValueError(f"AMED-Plugin: unknown base solver {base!r}; choose one of {', '.join(PLUGIN_BASES)}")
    unknown = sorted(set(stored or {}) - set(SOLVER_KEYS)) + sorted(set(given) - set(SOLVER_KEYS))
    if unknown:
        raise ValueError(f"AMED-Plugin: unknown solver option(s) {', '.join(unknown)}; the options are "
                         f"{', '.join(SOLVER_KEYS)}")

    def pick(key: str, default: Any) -> Any:
        for src in (given, stored or {}):
            if src.get(key) is not None:
                return src[key]
        return default

    out: dict[str, Any] = dict.fromkeys(SOLVER_KEYS)
    if base in ORDER_LIMIT:
        order = pick("max_order", DEFAULT_MAX_ORDER[base])
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= ORDER_LIMIT[base]:
            raise ValueError(f"AMED-Plugin: max_order for base {base!r} must be an integer in 1..{ORDER_LIMIT[base]}, "
                             f"got {order!r}")
        out["max_order"] = order
        out["lower_order_final"] = bool(pick("lower_order_final", base == "dpmpp"))
    if base == "dpmpp":
        out["predict_x0"] = bool(pick("predict_x0", True))
        out["taylor_d2"] = bool(pick("taylor_d2", False))
        out["thresholding"] = bool(pick("thresholding", out["predict_x0"]))
    for key, v in out.items():
        if v is not None and key != "max_order" and not isinstance(v, bool):
            raise ValueError(f"AMED-Plugin: {key} must be true or false, got {v!r}")
    return out


# ------------------------------------------------------------------------------------------------------ predictor
def pool_bottleneck(h: torch.Tensor | None, batch: int, size: int = 8) -> torch.Tensor:
    """Bottleneck feature -> ``[B, size * size]`` (section 4.1): detached, channel mean, average-pooled to 8x8 when the
    map has another size (our extension for 768 px SD / SDXL).  Accepts ``[B, C, h, w]``, ``[B, h, w]`` or
    ``[B, size * size]``; None gives zeros (AFS step or a host without a hook)."""
    if h is None:
        return torch.zeros(batch, size * size)
    h = h.detach()
    if h.dtype != torch.float64:
        h = h.float()  # half-precision host features are averaged in float32 (float64 ones stay float64)
    if h.shape[0] != batch:
        raise ValueError(
            f"AMED: the bottleneck feature has {h.shape[0]} rows but the batch has {batch}; under CFG the host adapter "
            f"must return the conditional half only (section 4.1)"
        )
    if h.ndim == 2 and h.shape[1] == size * size:
        return h
    if h.ndim == 4:
        h = h.mean(1)
    if h.ndim != 3:
        raise ValueError(f"AMED: expected a bottleneck map [B, C, h, w], got shape {tuple(h.shape)}")
    if tuple(h.shape[1:]) != (size, size):
        h = F.adaptive_avg_pool2d(h.unsqueeze(1), size).squeeze(1)
    return h.reshape(batch, size * size)


def _scaled(head: nn.Module | None, z: torch.Tensor, scale: float, like: torch.Tensor) -> torch.Tensor:
    """1 - s + 2 s sigmoid(head(z)) in (1 - s, 1 + s) (section 4.1); ones without a head."""
    if head is None:
        return torch.ones_like(like)
    return 1 - scale + 2 * scale * torch.sigmoid(head(z))[:, 0]


class AMEDPredictor(nn.Module):
    """g_phi of docs/ALGORITHMS.md section 4.1: ~9k parameters, per-sample (r, c, a) from the bottleneck, t_n, t_{n+1}.

    feature(64) -> Linear(64, 128) + SiLU + Linear(128, 4);  sinusoidal embedding of the raw sigma (8 channels,
    frequencies 10000^(-j/3), [sin | cos]) -> Linear(8, 8) + SiLU, shared by t_n and t_{n+1};  heads on the 20-d
    concatenation: r = sigmoid(.), c = 1 - s_c + 2 s_c sigmoid(.), a = 1 - s_a + 2 s_a sigmoid(.) (a head exists only
    when its scale is > 0; otherwise c = 1 / a = 1).  8,929 parameters with r only, +21 per extra head.
    """

    def __init__(
        self,
        scale_dir: float = 0.0,
        scale_time: float = 0.0,
        bottleneck_dim: int = 64,
        hidden: int = 128,
        emb_dim: int = 8,
        feat_dim: int = 4,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("scale_dir", scale_dir), ("scale_time", scale_time)):
            if not 0 <= v < 1:
                raise ValueError(f"AMEDPredictor: {name} must lie in [0, 1), got {v!r}")
        if emb_dim % 2 or emb_dim < 4:
            raise ValueError(f"AMEDPredictor: emb_dim must be an even number >= 4, got {emb_dim!r}")
        self.scale_dir, self.scale_time = float(scale_dir), float(scale_time)
        self.bottleneck_dim, self.hidden, self.emb_dim, self.feat_dim = bottleneck_dim, hidden, emb_dim, feat_dim
        half = emb_dim // 2
        self.register_buffer("freqs", torch.tensor([10000.0 ** (-j / (half - 1)) for j in range(half)]),
                             persistent=False)
        self.time_layer = nn.Linear(emb_dim, emb_dim)
        self.enc1 = nn.Linear(bottleneck_dim, hidden)
        self.enc2 = nn.Linear(hidden, feat_dim)
        width = feat_dim + 2 * emb_dim
        self.head_r = nn.Linear(width, 1)
        self.head_c = nn.Linear(width, 1) if self.scale_dir > 0 else None
        self.head_a = nn.Linear(width, 1) if self.scale_time > 0 else None
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int | None = None) -> None:
        """Xavier-uniform time layer, normal(0, 1/fan_in) elsewhere, zero biases (section 4.1)."""
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        with torch.no_grad():
            for m in self.modules():
                if not isinstance(m, nn.Linear):
                    continue
                if m is self.time_layer:
                    bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 * bound - bound)
                else:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
                m.bias.zero_()

    def config(self) -> dict[str, Any]:
        """Constructor arguments, stored next to the weights (``Coefficients.predictor_config``)."""
        return {"scale_dir": self.scale_dir, "scale_time": self.scale_time, "bottleneck_dim": self.bottleneck_dim,
                "hidden": self.hidden, "emb_dim": self.emb_dim, "feat_dim": self.feat_dim}

    @classmethod
    def from_state(cls, config: dict[str, Any] | None, state: dict[str, torch.Tensor]) -> AMEDPredictor:
        """Rebuild a predictor from ``config()`` and a state dict; the error names the missing/unexpected keys."""
        known = {"scale_dir", "scale_time", "bottleneck_dim", "hidden", "emb_dim", "feat_dim"}
        net = cls(**{k: v for k, v in (config or {}).items() if k in known})
        missing, unexpected = net.load_state_dict(dict(state), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"AMED predictor weights do not match the config {config}: missing {missing}, unexpected {unexpected}; "
                f"save the predictor together with predictor.config()"
            )
        return net

    @classmethod
    def from_coefficients(cls, coeffs: Any) -> AMEDPredictor:
        """The predictor stored in a ``Coefficients`` record (``kind='amed'`` / ``'amed_plugin'``)."""
        if not getattr(coeffs, "predictor", None):
            name = getattr(coeffs, "source", None) or "the coefficient set"
            raise ValueError(f"{name} holds no AMED predictor weights (kind={getattr(coeffs, 'kind', '?')!r})")
        return cls.from_state(coeffs.predictor_config, coeffs.predictor).eval()

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embedding of raw sigmas ``[B]`` -> ``[B, emb_dim]`` ([sin | cos]) followed by Linear + SiLU."""
        arg = t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return F.silu(self.time_layer(torch.cat([arg.sin(), arg.cos()], dim=1)))

    def forward(
        self, h: torch.Tensor | None, t_cur: torch.Tensor | float, t_next: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample ``(r, c, a)``, each ``[B]`` (B from ``h``, or from a ``[B]`` t when ``h`` is None)."""
        dev, dt = self.freqs.device, self.head_r.weight.dtype
        batch = h.shape[0] if h is not None else max(torch.as_tensor(t_cur).numel(), torch.as_tensor(t_next).numel())
        feat = pool_bottleneck(h, batch, int(round(math.sqrt(self.bottleneck_dim)))).to(dev, dt)
        tc = torch.as_tensor(t_cur, device=dev, dtype=dt).reshape(-1).expand(batch)
        tn = torch.as_tensor(t_next, device=dev, dtype=dt).reshape(-1).expand(batch)
        z = torch.cat([self.enc2(F.silu(self.enc1(feat))), self.embed(tc), self.embed(tn)], dim=1)
        r = torch.sigmoid(self.head_r(z))[:, 0]
        return r, _scaled(self.head_c, z, self.scale_dir, r), _scaled(self.head_a, z, self.scale_time, r)


# ------------------------------------------------------------------------------------------------------ solver step
def _per_sample(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """A number stays a number; a tensor becomes a ``[B]`` tensor in x's dtype/device."""
    if not torch.is_tensor(v):
        return float(v)
    return v.to(device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])


def predict_coefficients(
    predictor: nn.Module | None,
    features: Features | None,
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    called: bool,
    r: Any = 0.5,
    c: Any = 1.0,
    a: Any = 1.0,
) -> tuple[Any, Any, Any]:
    """(r, c, a) of one step: from the predictor on the bottleneck of the model call just made (zeros when ``called``
    is False, i.e. AFS, or without ``features``), else the given constants."""
    if predictor is None:
        return _per_sample(r, x), _per_sample(c, x), _per_sample(a, x)
    h = features() if (called and features is not None) else None
    if h is None:
        h = torch.zeros(x.shape[0], predictor.bottleneck_dim, device=x.device)
    out = predictor(h, sigma, sigma_next)
    return tuple(_per_sample(v, x) for v in out)  # type: ignore[return-value]


def _column(v: Any) -> Any:
    """[B] -> [B, 1] so that :func:`adasde_points` reads it as per-sample with K = 1."""
    return v.reshape(-1, 1) if torch.is_tensor(v) else v


def amed_step(
    model: Any,
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    predictor: nn.Module | None = None,
    features: Features | None = None,
    r: Any = 0.5,
    c: Any = 1.0,
    a: Any = 1.0,
    extra_args: dict | None = None,
    afs: bool = False,
    flow: bool = False,
    denoised: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, Any, Any]]:
    """One AMED-Solver step t_n -> t_{n+1} (docs/ALGORITHMS.md section 4.2); differentiable in the predictor / r, c, a.

    d_n from D(x; t_n) (``denoised``: the output of the model call just made, so that ``features()`` refers to it;
    AFS when ``afs``), (r, c, a) = g_phi(h_n, t_n, t_{n+1}) or the given constants, s = t_{n+1}^r t_n^{1-r},
    x_s = x + (s - t_n) d_n, d_s = (x_s - D(x_s; a s)) / s, x_{n+1} = x + c (t_{n+1} - t_n) d_s.
    Returns ``(x_{n+1}, D(x; t_n), (r, c, a))``.
    """
    extra_args = extra_args or {}
    called = not afs
    if afs:
        denoised = afs_denoised(x, sigma, flow)
    elif denoised is None:
        denoised = model(x, model_sigma(sigma, x), **extra_args)
    r, c, a = predict_coefficients(predictor, features, x, sigma, sigma_next, called, r, c, a)
    x_next = adasde_points(model, x, sigma, sigma_next, x - denoised, _column(r), _column(a), _column(c), 1.0,
                           extra_args)
    return x_next, denoised, (r, c, a)


@dataclass
class PluginHistory:
    """History of the multistep bases: iPNDM directions ``d``; DPM-Solver++ model outputs ``m`` and their sigmas ``s``
    (numbers or per-sample tensors), most recent last."""

    d: list[torch.Tensor] = field(default_factory=list)
    m: list[torch.Tensor] = field(default_factory=list)
    s: list[Any] = field(default_factory=list)

    def detach(self) -> PluginHistory:
        """A copy with detached buffers (AMED training detaches between steps, section 4.4)."""
        det = lambda v: v.detach() if torch.is_tensor(v) else v  # noqa: E731
        return PluginHistory([det(v) for v in self.d], [det(v) for v in self.m], [det(v) for v in self.s])


def plugin_step(
    base: str,
    model: Any,
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    denoised: torch.Tensor,
    r: Any,
    c: Any,
    a: Any,
    history: PluginHistory | None = None,
    extra_args: dict | None = None,
    max_order: int | None = None,
    predict_x0: bool = True,
    remaining: int | None = None,
    taylor_d2: bool = False,
    thresholding: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One AMED-Plugin step t_n -> s -> t_{n+1} on ``base`` (docs/ALGORITHMS.md section 4.3); differentiable in r, c, a.

    ``denoised`` = D(x; t_n); ``r, c, a`` numbers or per-sample ``[B]``; ``history`` is updated in place (multistep
    bases); ``remaining``: sub-steps left on the combined grid including this step's first one (for
    ``lower_order_final``; None = no cap).  Multistep order: min(max_order, history + 1) while the history is short,
    then min(max_order, sub-steps left) (the AMED reference's and DPM-Solver's rule).  ``thresholding``: dynamic
    thresholding of every data prediction the dpmpp base keeps in data-prediction mode (``baselines.dynamic_threshold``;
    None: on in data-prediction mode, as the AMED reference; for pixel models with data in [-1, 1]).
    Returns ``(x_{n+1}, D(x_s; a s))``.
    """
    if base not in PLUGIN_BASES:
        raise ValueError(f"AMED-Plugin: unknown base solver {base!r}; choose one of {', '.join(PLUGIN_BASES)}")
    extra_args = extra_args or {}
    hist = history if history is not None else PluginHistory()
    sm = sigma_next**r * sigma ** (1 - r)
    if base == "dpm_2":
        return dpm2_step(model, x, sigma, sigma_next, denoised, r, c, a, extra_args)
    if base == "euler":
        x_s, den_s, diff_s = inserted_point(model, x, sigma, sm, x - denoised, a, extra_args)
        return axpy(x_s, c * (sigma_next - sm) / sm, diff_s), den_s
    order_cap = DEFAULT_MAX_ORDER[base] if max_order is None else int(max_order)

    def order(available: int, sub: int) -> int:
        """history + 1 while that is below max_order, else min(max_order, sub-steps left) for the first (sub = 0) or
        second (sub = 1) half-step (lower-order-final only caps a full-order step, as in the reference)."""
        if available + 1 < order_cap or remaining is None:
            return min(order_cap, available + 1)
        return max(1, min(order_cap, remaining - sub))

    if base == "ipndm":  # both half-steps Adams-Bashforth over all earlier half-point directions
        d = (x - denoised) / sigma
        x_s = axpy(x, sm - sigma, ab_direction(d, hist.d, order(len(hist.d), 0)))
        hist.d.append(d)
        den_s = model(x_s, model_sigma(a * sm, x), **extra_args)
        d_s = (x_s - den_s) / bcast(sm, x)
        x_next = axpy(x_s, c * (sigma_next - sm), ab_direction(d_s, hist.d, order(len(hist.d), 1)))
        hist.d.append(d_s)
        del hist.d[: max(0, len(hist.d) - (order_cap - 1))]
        return x_next, den_s
    # dpmpp: two ordinary multistep updates on the combined grid; the second one's model terms scaled by c
    if thresholding is None:
        thresholding = predict_x0
    fix = dynamic_threshold if (thresholding and predict_x0) else (lambda t: t)
    m = fix(denoised) if predict_x0 else (x - denoised) / sigma
    o = order(len(hist.m), 0)
    k, w = dpmpp_weights(hist.s, sigma, sm, o, predict_x0, taylor_d2)
    x_s = lincomb([(k, x), (w[0], m)] + [(w[j], hist.m[-j]) for j in range(1, o)])
    hist.m.append(m)
    hist.s.append(sigma)
    den_s = model(x_s, model_sigma(a * sm, x), **extra_args)
    m_s = fix(den_s) if predict_x0 else (x_s - den_s) / bcast(sm, x)
    o = order(len(hist.m), 1)
    k, w = dpmpp_weights(hist.s, sm, sigma_next, o, predict_x0, taylor_d2)
    x_next = lincomb([(k, x_s), (c * w[0], m_s)] + [(c * w[j], hist.m[-j]) for j in range(1, o)])
    hist.m.append(m_s)
    hist.s.append(sm)
    del hist.m[: max(0, len(hist.m) - 2)], hist.s[: max(0, len(hist.s) - 2)]
    return x_next, den_s


# ---------------------------------------------------------------------------------------------------------- samplers
def _setup(
    x: torch.Tensor, s: list[float], coeffs: Any, predictor: nn.Module | None, afs: bool | None
) -> tuple[nn.Module | None, dict[str, list], bool]:
    """Predictor (given, or the one stored in ``coeffs``), constant rows fitted to the grid and AFS."""
    tables = resolve_tables(coeffs, s, afs=afs)
    if tables.K != 1:
        name = getattr(coeffs, "source", None) or "the coefficient set"
        raise ValueError(f"AMED uses one inserted point per step, but {name} has K={tables.K}; sample it with "
                         f"sample_adasde or distil AMED coefficients (K=1)")
    if predictor is None and coeffs is not None and getattr(coeffs, "predictor", None):
        predictor = AMEDPredictor.from_coefficients(coeffs) if tables.trained else None  # mismatch: untrained
    if predictor is not None:
        predictor = predictor.to(x.device)
    rows = {k: [row[0] for row in getattr(tables, k).tolist()] for k in ("r", "a", "c")}  # one host sync
    return predictor, rows, tables.afs


@torch.no_grad()
def sample_amed(
    model: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: bool | None = None,
    predictor: nn.Module | None = None,
    features: Features | None = None,
    coeffs: Any = None,
    afs: bool | None = None,
    flow: bool | None = None,
) -> torch.Tensor:
    """AMED-Solver (docs/ALGORITHMS.md section 4.2) in the k-diffusion convention.

    ``predictor``: an :class:`AMEDPredictor` (default: the one stored in ``coeffs``, if any); ``features``: the host's
    bottleneck callable (None: zero features, the authors' "constant" SD mode, section 4.5).  Without a predictor the
    per-step r, a, c of ``coeffs`` are used (AdaSDE with gamma = 0; none = DPM-Solver-2).  The grid must fit the
    coefficients as for AdaSDE (``adasde.resolve_tables``: suffix allowed, otherwise a CoefficientMismatchWarning and
    untrained values).  NFE = 2 (N - 1) - [AFS] (+1 with a trailing 0).
    """
    s, zero = prepare_grid(sigmas)
    flow = is_flow_model(model) if flow is None else bool(flow)
    predictor, rows, use_afs = _setup(x, s, coeffs, predictor, afs)

    def step(i: int, x: torch.Tensor, den: torch.Tensor) -> tuple[torch.Tensor, None]:
        x_next, _, _ = amed_step(model, x, s[i], s[i + 1], predictor, features, rows["r"][i], rows["c"][i],
                                 rows["a"][i], extra_args, afs=use_afs and i == 0, flow=flow, denoised=den)
        return x_next, None

    return run_steps(model, x, s, step, extra_args, callback, disable, use_afs, flow, zero)


@torch.no_grad()
def sample_amed_plugin(
    model: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Any = None,
    disable: bool | None = None,
    base: str | None = None,
    predictor: nn.Module | None = None,
    features: Features | None = None,
    coeffs: Any = None,
    afs: bool | None = None,
    max_order: int | None = None,
    predict_x0: bool | None = None,
    lower_order_final: bool | None = None,
    taylor_d2: bool | None = None,
    thresholding: bool | None = None,
    flow: bool | None = None,
) -> torch.Tensor:
    """AMED-Plugin (docs/ALGORITHMS.md section 4.3) on ``base`` = euler|dpm_2|ipndm|dpmpp (default: ``coeffs.base``,
    else ipndm).  One inserted point per interval; r/c/a from the predictor g_phi on the bottleneck (``predictor``,
    default: the one stored in ``coeffs``; ``features``: the host's bottleneck callable, None = zero features) or
    from per-step constant tables (untrained: r = 0.5, c = a = 1, i.e. the base solver on the grid with geometric
    midpoints inserted).  Solver form (:func:`plugin_solver`): each of ``max_order``, ``predict_x0``,
    ``lower_order_final``, ``taylor_d2``, ``thresholding`` left at None comes from the file
    (``coeffs.solver_options``, the form it was trained with), else the AMED reference's defaults (dpmpp: order 3,
    lower-order-final, data prediction with dynamic thresholding; ipndm: order 4).
    NFE = 2 (N - 1) - [AFS] (+1 with a trailing 0).
    """
    stored = getattr(coeffs, "base", None) if coeffs is not None else None
    if base is not None and stored is not None and base != stored:
        name = getattr(coeffs, "source", None) or "the coefficient set"
        raise ValueError(f"AMED-Plugin: {name} was trained on base {stored!r}, but base={base!r} was requested")
    base = base or stored or "ipndm"
    form = plugin_solver(base, getattr(coeffs, "solver_options", None) if coeffs is not None else None,
                         max_order=max_order, predict_x0=predict_x0, lower_order_final=lower_order_final,
                         taylor_d2=taylor_d2, thresholding=thresholding)
    s, zero = prepare_grid(sigmas)
    flow = is_flow_model(model) if flow is None else bool(flow)
    predictor, rows, use_afs = _setup(x, s, coeffs, predictor, afs)
    hist = PluginHistory()
    steps = len(s) - 1

    def step(i: int, x: torch.Tensor, den: torch.Tensor) -> tuple[torch.Tensor, None]:
        called = not (use_afs and i == 0)
        r, c, a = predict_coefficients(predictor, features, x, s[i], s[i + 1], called, rows["r"][i], rows["c"][i],
                                       rows["a"][i])
        x_next, _ = plugin_step(base, model, x, s[i], s[i + 1], den, r, c, a, hist, extra_args,
                                **step_options(form, steps - i))
        return x_next, None

    return run_steps(model, x, s, step, extra_args, callback, disable, use_afs, flow, zero)


def step_options(form: dict[str, Any], steps_left: int) -> dict[str, Any]:
    """:func:`plugin_step` keywords for a resolved solver form (:func:`plugin_solver`) with ``steps_left`` intervals
    to go, this one included (lower-order-final counts the 2 sub-steps per interval)."""
    return {"max_order": form["max_order"], "predict_x0": form["predict_x0"] is not False,
            "remaining": 2 * steps_left if form["lower_order_final"] else None,
            "taylor_d2": bool(form["taylor_d2"]), "thresholding": bool(form["thresholding"])}
