"""``adasde bench fid``: speed of the evaluation pieces on this machine -> bench/results/fid.md.

* Frechet distance at 2048-d (the FID size) for each method of ``evaluation.metrics`` (target: under 1 s on CPU),
  with the agreement between methods;
* ``RunningStats.update`` throughput at 2048-d;
* feature throughput of both networks on this machine's device (Inception-v3 with *random* weights when the real
  file is absent: identical cost, meaningless features; the Fashion-MNIST classifier with its shipped weights, or
  random ones when the weights file is missing);
* whether a GPU was available (the Inception feature pass is meant to run on one).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import machine, md_table, today, write_report


def _best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (the machine may be shared) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _cpu_time(fn: Callable[[], Any]) -> float:
    """Process CPU seconds of one run (all threads): less sensitive to other jobs than wall time."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def _random_cov(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, d)).astype(np.float64)
    x = x @ (np.eye(d) + 0.1 * rng.standard_normal((d, d)))  # correlated features
    return x.mean(0), np.cov(x, rowvar=False)


def bench_frechet(d: int, repeat: int, with_sqrtm: bool) -> tuple[list[list[Any]], list[str]]:
    from ..evaluation.metrics import frechet_distance

    rng = np.random.default_rng(0)
    mu1, s1 = _random_cov(rng, d, 2 * d)
    mu2, s2 = _random_cov(rng, d, 2 * d)
    _, s_sing = _random_cov(rng, d, d // 2)  # rank d/2 - 1: fewer images than dimensions
    rows, notes = [], []
    values: dict[str, float] = {}
    methods = ["cholesky", "eigh"] + (["sqrtm"] if with_sqrtm else [])
    frechet_distance(mu1[:8], s1[:8, :8], mu2[:8], s2[:8, :8])  # warm-up (LAPACK, thread pool)
    for m in methods:
        cpu = _cpu_time(lambda m=m: frechet_distance(mu1, s1, mu2, s2, method=m)) if m != "sqrtm" else None
        t, res = _best_of(lambda m=m: frechet_distance(mu1, s1, mu2, s2, method=m), 1 if m == "sqrtm" else repeat)
        ts, res_s = (None, None) if m == "sqrtm" else _best_of(
            lambda m=m: frechet_distance(mu1, s_sing, mu2, s2, method=m), 1)
        values[m] = res.value
        rows.append([m, f"{t:.3f}", "-" if cpu is None else f"{cpu:.3f}", "-" if ts is None else f"{ts:.3f}",
                     f"{res.value:.6f}", "-" if res_s is None else f"{res_s.value:.6f}",
                     f"{res.diagnostics.get('max_imag', 0.0):.1e}"])
    if "sqrtm" in values:
        notes.append(f"|cholesky - sqrtm| = {abs(values['cholesky'] - values['sqrtm']):.2e} "
                     f"(relative {abs(values['cholesky'] - values['sqrtm']) / values['sqrtm']:.1e})")
    notes.append(f"|cholesky - eigh| = {abs(values['cholesky'] - values['eigh']):.2e}")
    return rows, notes


def bench_running_stats(d: int, batch: int, batches: int) -> float:
    from ..evaluation.stats import RunningStats

    x = torch.randn(batch, d)
    rs = RunningStats(d)
    t = time.perf_counter()
    for _ in range(batches):
        rs.update(x)
    return batch * batches / (time.perf_counter() - t)


def _throughput(net: torch.nn.Module, images: torch.Tensor, repeat: int) -> float:
    net(images[:1])  # warm-up
    t, _ = _best_of(lambda: net(images), repeat)
    return images.shape[0] / t


def bench_inception(device: str, batch: int, res: int, repeat: int) -> tuple[float | None, str]:
    from ..evaluation.features import FeatureNetError, find_inception_weights, load_feature_net

    try:
        real = find_inception_weights()
    except FeatureNetError:
        real = None
    try:
        if real is not None:
            net, note = load_feature_net("inception", device=device), f"real weights ({real.name})"
        else:
            import torchvision

            tv = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False,
                                                 init_weights=False)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "random-inception.pth"
                torch.save(tv.state_dict(), path)
                net = load_feature_net("inception", device=device, weights=path)
            note = "RANDOM weights (real file absent): same cost, meaningless features"
    except (ImportError, FeatureNetError) as exc:
        return None, f"not measured: {exc}".splitlines()[0]
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    return _throughput(net, images, repeat), note


def bench_fmnist(device: str, batch: int, repeat: int) -> tuple[float | None, str]:
    from ..evaluation.features import FeatureNetError, load_feature_net

    try:
        net, note = load_feature_net("fmnist", device=device), "shipped weights"
    except (FeatureNetError, OSError, ValueError):
        try:
            from ..builtin.classifier import FMNISTClassifier
            from ..evaluation.features import FMNISTFeatures
        except ImportError as exc:
            return None, f"not measured: {exc}"
        net = FMNISTFeatures.__new__(FMNISTFeatures)
        torch.nn.Module.__init__(net)
        net.net, net.dim, net.info = FMNISTClassifier().eval().requires_grad_(False), 128, {}
        net = net.to(device)
        note = "RANDOM weights (shipped classifier not built yet): same cost"
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, device=device)
    return _throughput(net, images, repeat), note


def run(d: int = 2048, repeat: int = 3, with_sqrtm: bool = True, inception_batch: int = 4, inception_res: int = 32,
        fmnist_batch: int = 500, device: str | None = None, out_dir: str | None = None) -> str:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lines = ["# FID tooling benchmark (`adasde bench fid`)", "", f"- date: {today()}", f"- machine: {machine()}",
             f"- device for feature networks: {device}",
             f"- load average when started: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
             f"({os.cpu_count()} cores shared with other jobs; wall times are upper bounds)",
             f"- OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} (numpy/scipy BLAS threads; "
             "threaded LAPACK spins badly on an oversubscribed machine)", ""]
    rows, notes = bench_frechet(d, repeat, with_sqrtm)
    lines += [f"## Frechet distance at {d}-d (float64, CPU)", "",
              "Goal: under 1 s. Time = best of the runs; full-rank case from 2d samples, singular case from d/2 "
              "samples.", "",
              md_table(["method", "wall full rank [s]", "CPU full rank [s]", "wall singular [s]", "value full rank",
                        "value singular", "max imag discarded"], rows), ""]
    lines += [f"- {n}" for n in notes] + [""]
    rate = bench_running_stats(d, 256, 8)
    lines += ["## Streaming statistics", "", f"- `RunningStats.update` at {d}-d, batches of 256: {rate:,.0f} "
              "feature rows/s (float64 accumulation)", ""]
    inc, inc_note = bench_inception(device, inception_batch, inception_res, repeat)
    fm, fm_note = bench_fmnist(device, fmnist_batch, repeat)
    fmt = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
    lines += ["## Feature networks", "",
              md_table(["network", "input", "batch", "images/s", "note"], [
                  ["inception (inception-v3-compat, 2048-d)", f"uint8 3x{inception_res}x{inception_res} -> 299",
                   inception_batch, fmt(inc), inc_note],
                  ["fmnist (fmnist-classifier, 128-d)", "uint8 1x28x28", fmnist_batch, fmt(fm), fm_note]]), ""]
    if inc:
        lines.append(f"- 50k images through Inception at this rate: {50000 / inc / 3600:.1f} h")
    gpu = torch.cuda.is_available()
    lines += ["", "## GPU", "",
              (f"- GPU present: {torch.cuda.get_device_name(0)}" if gpu else
               "- No GPU was available in this session, so the Inception-on-H100 goal (FID-50k feature pass in "
               "minutes) was not measured; run `adasde bench fid --device cuda` on a GPU machine."), ""]
    text = "\n".join(lines)
    write_report("fid", text, out_dir)
    return text
