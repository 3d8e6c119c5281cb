"""EDM training of the embedded Fashion-MNIST U-Net (Karras et al. 2022, section 5 and Table 1).

Loss (EDM eq. 2 with the Table-1 choices): ln(sigma) ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2,
weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, L = lambda |D(y + sigma n; sigma) - y|^2, sd = 0.5.
Adam with a linear learning-rate warm-up, an EMA of the weights with a half-life in images (and EDM's ramp-up), and
optional horizontal flips.

Determinism: everything random is drawn from generators seeded by ``(seed, epoch)`` (data order) and ``(seed,
step)`` (sigma, noise, flips), so a run is fully determined by ``seed`` and the number of steps; a time budget
(``minutes``) only decides *where* to stop, and ``--steps N`` with the recorded step count reproduces a timed run.
Checkpoints are safetensors (model, EMA, Adam moments) plus JSON metadata, written atomically; resuming from a
checkpoint gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from .unet import FMNISTDenoiser, UNetConfig, count_params

HERE = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = HERE / "weights" / "fmnist_unet.safetensors"
META_KEY = "adasde"
CKPT_FORMAT = "adasde-builtin-unet-checkpoint"
WEIGHTS_FORMAT = "adasde-builtin-unet"


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (all recorded in the weights' metadata)."""

    seed: int = 0
    steps: int | None = None  # stop after this many optimizer steps (None: only the time budget)
    minutes: float | None = None  # wall-clock budget for this invocation
    batch: int = 128
    lr: float = 1e-3
    warmup_steps: int = 300
    grad_clip: float = 1.0
    ema_halflife_kimg: float = 50.0
    ema_rampup: float = 0.1
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    flip: bool = False
    bf16: bool = True  # CPU autocast to bfloat16 (about 2x faster on AVX512-BF16 CPUs)
    threads: int | None = None
    checkpoint: str | None = None  # path of the resumable checkpoint
    checkpoint_minutes: float = 5.0
    resume: bool = False
    out: str | None = None  # final EMA weights (.safetensors)
    out_dtype: str = "float16"
    preview: str | None = None  # PNG sample grid written at checkpoints and at the end
    arch: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


def _atomic_save(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | os.PathLike) -> None:
    from safetensors.torch import save as save_bytes

    from ..fileio import atomic_write_bytes

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save_bytes(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))


def _read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def machine_info() -> dict[str, Any]:
    """Where a run happened (recorded so that training time can be interpreted)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _epoch_perm(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed + 1) * 2_147_483_629 + step)


def _batch_indices(seed: int, step: int, n: int, batch: int, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    per_epoch = n // batch
    if per_epoch < 1:
        raise ValueError(f"batch {batch} is larger than the training set ({n} images)")
    epoch, k = divmod(step, per_epoch)
    if epoch not in cache:
        cache.clear()
        cache[epoch] = _epoch_perm(seed, epoch, n)
    return cache[epoch][k * batch:(k + 1) * batch]


def edm_loss(model: FMNISTDenoiser, y: torch.Tensor, gen: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """EDM training loss (Karras et al. 2022, eq. 2, Table 1), averaged over pixels and batch."""
    n = y.shape[0]
    rnd = torch.randn(n, generator=gen)
    sigma = (rnd * cfg.p_std + cfg.p_mean).exp().reshape(-1, 1, 1, 1)
    weight = (sigma ** 2 + cfg.sigma_data ** 2) / (sigma * cfg.sigma_data) ** 2
    noise = torch.randn(y.shape, generator=gen) * sigma
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16 and y.device.type == "cpu"):
        D = model(y + noise, sigma.reshape(-1))
    return (weight * (D.float() - y) ** 2).mean()


def _ema_beta(cfg: TrainConfig, step: int) -> float:
    nimg = (step + 1) * cfg.batch
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup:
        halflife = min(halflife, nimg * cfg.ema_rampup)
    return 0.5 ** (cfg.batch / max(halflife, 1e-8))


def _opt_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(val).clone()
    return tensors, {"param_groups": sd["param_groups"]}


def _load_opt(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: str | os.PathLike, model: FMNISTDenoiser, ema: FMNISTDenoiser,
                    opt: torch.optim.Optimizer, step: int, cfg: TrainConfig, extra: dict[str, Any]) -> None:
    """Resumable checkpoint: ``model.*``, ``ema.*``, ``opt.*`` tensors and JSON metadata (no pickle)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_t, opt_meta = _opt_tensors(opt)
    tensors.update(opt_t)
    meta = {"format": CKPT_FORMAT, "step": step, "arch": model.cfg.to_dict(), "train": asdict(cfg), **opt_meta,
            **extra}
    _atomic_save(tensors, meta, path)


def load_checkpoint(path: str | os.PathLike, model: FMNISTDenoiser, ema: FMNISTDenoiser,
                    opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore :func:`save_checkpoint` state into the given objects; returns the metadata."""
    try:
        tensors, meta = _read_safetensors(path)
    except Exception as exc:  # noqa: BLE001 - any parse error means a damaged file
        raise ValueError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from exc
    if meta.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not an adasde train-builtin checkpoint (format {meta.get('format')!r})")
    if meta["arch"] != model.cfg.to_dict():
        raise ValueError(f"checkpoint {path} has architecture {meta['arch']}, this run uses {model.cfg.to_dict()}; "
                         f"pass the same --arch options or delete the checkpoint")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    _load_opt(opt, tensors, meta)
    return meta


def export_weights(ema: FMNISTDenoiser, path: str | os.PathLike, meta: dict[str, Any], dtype: str = "float16") -> None:
    """Write the (EMA) U-Net weights for :func:`builtin.loader.load_fmnist`: ``unet.*`` tensors + JSON metadata."""
    dt = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    tensors = {k: v.to(dt) if v.is_floating_point() else v for k, v in ema.unet.state_dict().items()}
    full = {"format": WEIGHTS_FORMAT, "version": 1, "arch": ema.cfg.to_dict(), "dtype": dtype, **meta}
    _atomic_save(tensors, full, path)


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, dtype: str = "float16") -> dict[str, Any]:
    """Write the EMA weights of a training checkpoint as loadable weights (e.g. to ship an interrupted run)."""
    tensors, meta = _read_safetensors(ckpt)
    if meta.get("format") != CKPT_FORMAT:
        raise ValueError(f"{ckpt} is not an adasde train-builtin checkpoint (format {meta.get('format')!r})")
    ema = FMNISTDenoiser(UNetConfig.from_dict(meta["arch"]))
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    cfg = meta.get("train", {})
    step = int(meta["step"])
    summary = {
        "steps": step, "kimg": step * cfg.get("batch", 0) / 1000, "seed": cfg.get("seed"),
        "train_seconds": meta.get("train_seconds"), "params": count_params(ema.unet), "config": cfg,
        "final_loss_avg100": (sum(meta["recent_losses"][-100:]) / len(meta["recent_losses"][-100:])
                              if meta.get("recent_losses") else None),
        "machine": machine_info(), "exported_from_checkpoint": str(ckpt),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": "Fashion-MNIST train split (60,000 images, Debian dataset-fashion-mnist), scaled to [-1, 1]",
    }
    export_weights(ema, out, {"training": summary}, dtype)
    return summary


@torch.no_grad()
def heun_sample(model: torch.nn.Module, n: int, steps: int = 18, seed: int = 0, rho: float = 7.0,
                sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """EDM deterministic Heun sampler (Karras et al. 2022, Algorithm 1) with the rho=7 schedule; preview use."""
    i = torch.arange(steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)]).tolist()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 28, 28), generator=g) * t[0]
    for k in range(steps):
        s, s_next = t[k], t[k + 1]
        d = (x - model(x, torch.full((n,), s))) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - model(x_next, torch.full((n,), s_next))) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> None:
    """Save ``[N, 1, H, W]`` images in [-1, 1] as a PNG grid (atomic)."""
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0]
    n, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = torch.zeros((rows * (h + 2), nrow * (w + 2)), dtype=torch.uint8)
    for k in range(n):
        r, c = divmod(k, nrow)
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = x[k]
    from ..fileio import atomic_save

    atomic_save(path, lambda f: Image.fromarray(grid.numpy()).save(f, format="PNG"))


def train(cfg: TrainConfig, data: torch.Tensor | None = None) -> tuple[FMNISTDenoiser, dict[str, Any]]:
    """Train (or resume) the U-Net; returns the EMA model and a summary.  ``data``: ``[N,1,28,28]`` in [-1, 1]
    (default: the Fashion-MNIST train split)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.steps is None and cfg.minutes is None:
        raise ValueError("give a step count (--steps) or a time budget (--minutes)")
    if data is None:
        from .data import load_fmnist

        data, _ = load_fmnist("train")
    arch = UNetConfig.from_dict(cfg.arch) if cfg.arch else UNetConfig()
    torch.manual_seed(cfg.seed)  # initial weights
    model = FMNISTDenoiser(arch)
    ema = FMNISTDenoiser(arch)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    model.train()
    ema.eval()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    step = 0
    prev_seconds = 0.0
    losses: list[float] = []
    if cfg.resume and cfg.checkpoint and Path(cfg.checkpoint).is_file():
        meta = load_checkpoint(cfg.checkpoint, model, ema, opt)
        step = int(meta["step"])
        prev_seconds = float(meta.get("train_seconds", 0.0))
        losses = list(meta.get("recent_losses", []))
    start_step = step
    t0 = time.time()
    last_ckpt = t0
    cache: dict[int, torch.Tensor] = {}
    params = list(model.parameters())
    ema_params = list(ema.parameters())
    total = cfg.steps if cfg.steps is not None else None
    bar = tqdm(total=total, initial=step, disable=not cfg.progress, desc="train-builtin", unit="step",
               dynamic_ncols=True)

    def extra_meta() -> dict[str, Any]:
        return {"train_seconds": prev_seconds + time.time() - t0, "recent_losses": losses[-200:],
                "params": count_params(model.unet)}

    while True:
        if cfg.steps is not None and step >= cfg.steps:
            break
        if cfg.minutes is not None and time.time() - t0 >= cfg.minutes * 60:
            break
        idx = _batch_indices(cfg.seed, step, data.shape[0], cfg.batch, cache)
        y = data[idx].float()
        gen = _step_generator(cfg.seed, step)
        if cfg.flip:
            flip = torch.rand(y.shape[0], generator=gen) < 0.5
            y = torch.where(flip[:, None, None, None], y.flip(-1), y)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        loss = edm_loss(model, y, gen, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        beta = _ema_beta(cfg, step)
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - beta)
        step += 1
        lv = float(loss.detach())
        losses.append(lv)
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
        if cfg.checkpoint and time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
            save_checkpoint(cfg.checkpoint, model, ema, opt, step, cfg, extra_meta())
            last_ckpt = time.time()
            if cfg.preview:
                save_grid(heun_sample(ema, 64, steps=18, seed=cfg.seed), cfg.preview)
    bar.close()
    summary = {
        "steps": step,
        "steps_this_run": step - start_step,
        "kimg": step * cfg.batch / 1000,
        "seed": cfg.seed,
        "train_seconds": prev_seconds + time.time() - t0,
        "final_loss_avg100": (sum(losses[-100:]) / len(losses[-100:])) if losses else None,
        "params": count_params(model.unet),
        "config": asdict(cfg),
        "machine": machine_info(),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": "Fashion-MNIST train split (60,000 images, Debian dataset-fashion-mnist), scaled to [-1, 1]",
    }
    if cfg.checkpoint and step > start_step:
        save_checkpoint(cfg.checkpoint, model, ema, opt, step, cfg, extra_meta())
    if cfg.out:
        export_weights(ema, cfg.out, {"training": summary}, cfg.out_dtype)
    if cfg.preview:
        save_grid(heun_sample(ema, 64, steps=18, seed=cfg.seed), cfg.preview)
    return ema, summary
