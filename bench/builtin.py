"""``adasde bench builtin``: FD-FMNIST of the built-in Fashion-MNIST model per solver and NFE, and each solver's own
error against the model's converged result from the same initial noise.

* ``--seeds`` disjoint seed blocks of ``--samples`` images (block b: seeds ``b*n .. (b+1)*n - 1``), the same blocks at
  every NFE and for every solver; an image depends only on its seed (``generate/loop.py``).
* The converged reference: Heun at ``--ref-nfe`` (35) calls on the model's default grid, computed once per seed block
  (in ``--batch`` chunks spread over the workers) and handed to every solver job of that block.
* Per solver, NFE and block (``block_metrics``): FD-FMNIST against the test-set statistics; FD-FMNIST against the
  converged samples of the same seeds (the solver's error alone); the mean per-image RMSE to the converged image from
  the same noise, pixels in [-1, 1].  AdaSDE and AMED use the shipped coefficient files through the sampling policy,
  the training-free solvers the paper schedules (samplers/presets.py).
* Verdict lines for the acceptance goals (``verdicts``), the train-vs-test floor, CPU time per image, and the
  hand-written notes of ``bench/notes/builtin.md`` ("What was tried").

Jobs run on ``--workers`` processes (one CPU thread each); results are kept by seed block, so the numbers do not depend
on ``--workers``.  FD-FMNIST is the Frechet distance in the penultimate features of our Fashion-MNIST classifier; it
is not FID.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .common import machine, md_table, notes, today, write_report

TABLE_SOLVERS = ("adasde", "amed", "ipndm", "dpmpp_3m", "unipc", "euler")
LEARNED = ("adasde", "amed")
TRAINING_FREE = ("ipndm", "dpmpp_3m", "unipc", "euler")
NFES = (3, 5, 7, 9)
REF_NFE = 35  # the converged model: Heun, as the demo's reference row
RATIO_TARGET = 0.6  # AdaSDE@headline / best training-free@headline
METRICS = ("fd", "fd_ref", "rmse")
NAMES = {"adasde": "AdaSDE", "amed": "AMED", "ipndm": "iPNDM"}
_W: dict[str, Any] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)
    from ..demo.run import FDScorer
    from ..models import load_model

    _W["model"] = load_model("builtin:fmnist").eval()
    _W["scorer"] = FDScorer()


def _plan(model: Any, name: str, nfe: int) -> Any:
    """The sampling policy's plan: shipped coefficients for AdaSDE / AMED, paper schedules for the training-free
    solvers, the model's default grid for heun."""
    from ..demo.run import _shipped
    from ..policy import plan

    coeffs = _shipped(name, nfe) if name in LEARNED else None
    return plan(model, name, nfe=nfe, coefficients=coeffs if coeffs is not None else "untrained")


def _samples(model: Any, name: str, nfe: int, seeds: Sequence[int], batch: int) -> torch.Tensor:
    """Float images in [0, 1] (decoded, not yet rounded to 8 bits) of solver ``name`` at ``nfe`` calls."""
    from ..generate import generate

    out = []
    for _, y in generate(model, _plan(model, name, nfe), seeds, batch=batch, decode=False, progress=False):
        with torch.no_grad():
            out.append(model.decode(y).float().cpu())
    return torch.cat(out)


def block_metrics(scorer: Any, images: torch.Tensor, ref_images: torch.Tensor,
                  ref_stats: tuple[Any, Any]) -> dict[str, float]:
    """One seed block's numbers (lower is better).  ``images`` and ``ref_images``: float [N, C, H, W] in [0, 1] from
    the same seeds; ``ref_stats``: feature (mean, covariance) of ``ref_images`` (``FDScorer.stats``).

    * ``fd``: FD-FMNIST of ``images`` (rounded to 8 bits, as written files are) against the test-set statistics;
    * ``fd_ref``: FD-FMNIST against the converged samples (docs/ALGORITHMS.md section 6, FID formula);
    * ``rmse``: per image, the root mean square pixel difference to its converged image, pixels in [-1, 1] (float,
      before 8-bit rounding); the mean over the images.
    """
    from ..evaluation import frechet_distance
    from ..generate.loop import to_uint8

    if images.shape != ref_images.shape:
        raise ValueError(f"block_metrics: images {tuple(images.shape)} and reference {tuple(ref_images.shape)} differ")
    st = scorer.stats(to_uint8(images).float() / 255)
    fd = float(frechet_distance(st.mu, st.sigma, scorer.ref.mu, scorer.ref.sigma))
    fd_ref = float(frechet_distance(st.mu, st.sigma, *ref_stats))
    diff = 2 * (images.double() - ref_images.double())  # [0, 1] -> [-1, 1] scale
    rmse = float(diff.flatten(1).pow(2).mean(1).sqrt().mean())
    return {"fd": fd, "fd_ref": fd_ref, "rmse": rmse}


# Images travel between processes as numpy arrays (pickled through the pipe, not torch's shared-memory files).
def _ref_job(seeds: list[int], nfe: int, batch: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    return _samples(_W["model"], "heun", nfe, seeds, batch).numpy(), time.perf_counter() - t


def _solver_job(name: str, nfe: int, seeds: list[int], batch: int, ref: np.ndarray,
                ref_stats: tuple[Any, Any]) -> tuple[dict[str, float], float]:
    t = time.perf_counter()
    m = block_metrics(_W["scorer"], _samples(_W["model"], name, nfe, seeds, batch), torch.from_numpy(ref), ref_stats)
    return m, time.perf_counter() - t


def run(samples: int = 5000, seeds: int = 3, nfes: tuple[int, ...] = NFES, solvers: tuple[str, ...] = TABLE_SOLVERS,
        headline: int = 5, ref_nfe: int = REF_NFE, batch: int = 500, workers: int = 2, out_dir: str | None = None,
        progress: bool = True) -> str:
    """Run the benchmark (module docstring) and write its report (``common.write_report``: an existing
    ``bench/results/builtin.md`` is kept unless ``out_dir`` is given); returns the report text.  Raises
    ``UsageError`` for a solver or NFE the sampling policy cannot plan, before any sampling."""
    from ..builtin.unet import FMNISTDenoiser
    from ..demo.run import FDScorer, _shipped
    from ..generate.loop import to_uint8
    from ..policy import ModelInfo

    info = ModelInfo.of(FMNISTDenoiser)
    ref_plan = _plan(info, "heun", ref_nfe)
    missing = [f"{s} NFE {k}" for s in solvers if s in LEARNED for k in nfes if _shipped(s, k) is None]
    cells = [(s, k) for s in solvers for k in nfes if f"{s} NFE {k}" not in missing]
    for s, k in cells:
        _plan(info, s, k)  # a bad solver / NFE fails here, not in a worker an hour later
    cells.sort(key=lambda c: -c[1])  # longest first keeps the pool busy
    blocks = [list(range(b * samples, (b + 1) * samples)) for b in range(seeds)]
    chunks = [(b, blk[i: i + batch]) for b, blk in enumerate(blocks) for i in range(0, samples, batch)]
    per_block = len(chunks) // seeds
    res: dict[tuple[str, int], dict[str, list[float]]] = {c: {m: [0.0] * seeds for m in METRICS} for c in cells}
    secs: dict[tuple[str, int], float] = {c: 0.0 for c in cells}
    parts: dict[int, dict[int, np.ndarray]] = {b: {} for b in range(seeds)}
    ref_fd, ref_secs = [0.0] * seeds, 0.0
    scorer = FDScorer()
    t0 = time.perf_counter()
    total = seeds * samples * (ref_nfe + sum(k for _, k in cells))
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool, \
            tqdm(total=total, desc="bench builtin", unit="img-NFE", disable=not progress) as bar:
        pending: dict[Future, tuple[Any, ...]] = {
            pool.submit(_ref_job, ch, ref_nfe, batch): ("ref", b, ch[0]) for b, ch in chunks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    tag = pending.pop(f)
                    if tag[0] == "solver":
                        _, s, k, b = tag
                        m, dt = f.result()
                        for key in METRICS:
                            res[(s, k)][key][b] = m[key]
                        secs[(s, k)] += dt
                        bar.update(samples * k)
                        continue
                    _, b, first = tag
                    parts[b][first], dt = f.result()
                    ref_secs += dt
                    bar.update(len(parts[b][first]) * ref_nfe)
                    if len(parts[b]) < per_block:
                        continue
                    ref = np.concatenate([parts[b].pop(i) for i in sorted(parts[b])])  # the block, in seed order
                    st = _one_thread(scorer.stats, to_uint8(torch.from_numpy(ref)).float() / 255)
                    ref_fd[b] = _fd(st, scorer.ref)
                    ref_stats = (st.mu, st.sigma)
                    for s, k in cells:
                        pending[pool.submit(_solver_job, s, k, blocks[b], batch, ref, ref_stats)] = ("solver", s, k, b)
        except BaseException:  # a failed job or Ctrl-C: drop the queued jobs instead of running them all
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    elapsed = time.perf_counter() - t0
    text = _report(res, secs, ref_secs, ref_fd, missing, elapsed, ref_plan, samples=samples, seeds=seeds, nfes=nfes,
                   solvers=solvers, headline=headline, ref_nfe=ref_nfe, batch=batch, workers=workers)
    path = write_report("builtin", text, out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return text


def _one_thread(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on one torch thread, as in the workers (the same features whatever this process uses)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(prev)


def _fd(st: Any, ref: Any) -> float:
    from ..evaluation import frechet_distance

    return float(frechet_distance(st.mu, st.sigma, ref.mu, ref.sigma))


# ------------------------------------------------------------------------------------------------------ the report
def _mean(v: Sequence[float]) -> float:
    return statistics.fmean(v)


def _sd(v: Sequence[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def _cell(v: Sequence[float] | None, digits: int = 2) -> str:
    return "-" if not v else f"{_mean(v):.{digits}f} ± {_sd(v):.{digits}f}"


def _label(name: str) -> str:
    return NAMES.get(name, name)


def _pct(worse: float, better: float) -> str:
    return f"+{100 * (worse - better) / better:.1f}%" if better > 0 else "n/a"


def _paired(a: Sequence[float], b: Sequence[float]) -> str:
    """Spread of the per-block difference (the same seeds in both, so the difference is paired)."""
    if len(a) < 2:
        return ""
    d = [x - y for x, y in zip(a, b)]
    return f"; per-block difference {_mean(d):.2f} ± {_sd(d):.2f}"


def _best_everywhere(rows: dict[tuple[str, int], Sequence[float]], nfes: Sequence[int], what: str,
                     detail: bool = True, digits: int = 2) -> list[str]:
    """'AdaSDE best at every NFE' by one metric (lower is better): a head line, and per NFE how far from the best."""
    missed, sub = [], []
    f = f".{digits}f"
    for k in nfes:
        others = sorted((_mean(v), n) for (n, kk), v in rows.items() if kk == k and n != "adasde")
        if ("adasde", k) not in rows or not others:
            missed.append(f"NFE {k} (not measured)")
            sub.append(f"  - NFE {k}: {'AdaSDE' if ('adasde', k) not in rows else 'no other solver'} not measured")
            continue
        a, (o, name) = _mean(rows[("adasde", k)]), others[0]
        if a < o:
            sub.append(f"  - NFE {k}: AdaSDE best, {a:{f}} against {name} {o:{f}} ({o - a:{f}} lower)")
        else:
            missed.append(f"NFE {k} ({name} {o:{f}}, AdaSDE {a:{f}}: {a - o:{f}} higher, {_pct(a, o)})")
            sub.append(f"  - NFE {k}: **{name} best**, {o:{f}}; AdaSDE {a:{f}} is {a - o:{f}} higher ({_pct(a, o)}"
                       f"{_paired(rows[('adasde', k)], rows[(name, k)])})")
    if not missed:
        head = f"- **AdaSDE best at every NFE ({what}): met**"
    else:
        head = f"- **AdaSDE best at every NFE ({what}): MISSED** at " + "; ".join(missed)
    return [head] + (sub if detail else [])


def verdicts(rows: dict[tuple[str, int], Sequence[float]], nfes: Sequence[int], headline: int = 5,
             target: float = RATIO_TARGET) -> list[str]:
    """The acceptance lines (Markdown bullets) from per-block FD-FMNIST values per (solver, NFE), lower is better:
    AdaSDE best at every NFE; AdaSDE / best training-free at the headline NFE <= ``target``; AMED < iPNDM at the
    headline NFE; each learned solver's FD falls with NFE.  A missed goal says by how much."""
    h = headline
    out = _best_everywhere(rows, nfes, "FD-FMNIST")
    tf = sorted((_mean(rows[(n, h)]), n) for n in TRAINING_FREE if (n, h) in rows)
    if ("adasde", h) in rows and tf:
        a, (b, bn) = _mean(rows[("adasde", h)]), tf[0]
        ratio = a / b
        what = f"AdaSDE@{h} / best training-free@{h} = {a:.2f} / {b:.2f} ({bn}) = {ratio:.2f}; target <= {target:g}"
        if ratio <= target:
            out.append(f"- **{what}: met** ({target - ratio:.2f} to spare)")
        else:
            out.append(f"- **{what}: MISSED** by {ratio - target:.2f} (AdaSDE@{h} would have to reach "
                       f"{target * b:.2f}, {a - target * b:.2f} lower than now)")
    else:
        out.append(f"- AdaSDE@{h} / best training-free@{h}: not measured (needs adasde and a training-free solver "
                   f"at NFE {h})")
    if ("amed", h) in rows and ("ipndm", h) in rows:
        a, i = _mean(rows[("amed", h)]), _mean(rows[("ipndm", h)])
        if a < i:
            out.append(f"- **AMED@{h} < iPNDM@{h}: met**: {a:.2f} against {i:.2f} ({i - a:.2f} lower)")
        else:
            out.append(f"- **AMED@{h} < iPNDM@{h}: MISSED**: {a:.2f} against {i:.2f}, {a - i:.2f} higher "
                       f"({_pct(a, i)}{_paired(rows[('amed', h)], rows[('ipndm', h)])})")
    else:
        out.append(f"- AMED@{h} < iPNDM@{h}: not measured (needs amed and ipndm at NFE {h})")
    for name in LEARNED:
        ks = sorted(k for k in nfes if (name, k) in rows)
        if len(ks) < 2:
            continue
        v = {k: _mean(rows[(name, k)]) for k in ks}
        chain = " -> ".join(f"{v[k]:.2f} ({k})" for k in ks)
        bad = [f"NFE {k1} -> {k2} rises by {v[k2] - v[k1]:.2f} ({_pct(v[k2], v[k1])})"
               for k1, k2 in zip(ks, ks[1:]) if v[k2] >= v[k1]]
        state = "met" if not bad else "MISSED"
        out.append(f"- **{_label(name)} FD-FMNIST falls with NFE: {state}**: {chain}" + (f"; {'; '.join(bad)}"
                                                                                      if bad else ""))
    return out


def _report(res: dict[tuple[str, int], dict[str, list[float]]], secs: dict[tuple[str, int], float], ref_secs: float,
            ref_fd: list[float], missing: list[str], elapsed: float, ref_plan: Any, *, samples: int, seeds: int,
            nfes: Sequence[int], solvers: Sequence[str], headline: int, ref_nfe: int, batch: int,
            workers: int) -> str:
    by = {m: {c: v[m] for c, v in res.items()} for m in METRICS}
    wide = []
    best = {k: min((_mean(v), n) for (n, kk), v in by["fd"].items() if kk == k)
            for k in nfes if any(kk == k for _, kk in by["fd"])}
    for name in solvers:
        row: list[object] = [name]
        for k in nfes:
            c = _cell(by["fd"].get((name, k)))
            row.append(f"**{c}**" if k in best and best[k][1] == name else c)
        wide.append(row)
    long = [[name, k, _cell(by["fd"][(name, k)]), _cell(by["fd_ref"][(name, k)]), _cell(by["rmse"][(name, k)], 4)]
            for name in solvers for k in nfes if (name, k) in res]
    n_all = samples * seeds
    speed = [[name, k, f"{1000 * secs[(name, k)] / n_all:.2f}"] for name in solvers for k in nfes if (name, k) in res]
    speed.append(["heun (converged reference, sampling only)", ref_nfe, f"{1000 * ref_secs / n_all:.2f}"])
    kind, rho = ref_plan.schedule
    grid = f"{kind} rho {rho:g}" if kind not in ("discrete", "custom") else kind
    command = (f"adasde bench builtin --samples {samples} --seeds {seeds} --nfes {' '.join(map(str, nfes))} "
               f"--solvers {' '.join(solvers)} --headline {headline} --ref-nfe {ref_nfe} --batch {batch} "
               f"--workers {workers}")
    ref_sd = f", sd {_sd(ref_fd):.2f}" if seeds > 1 else ""
    second = (_best_everywhere(by["fd_ref"], nfes, "FD vs converged, solver error alone", detail=False)
              + _best_everywhere(by["rmse"], nfes, "RMSE to converged", detail=False, digits=4))
    tried = notes("builtin")
    text = f"""# Built-in Fashion-MNIST model: FD-FMNIST and solver error per solver and NFE

Machine: {machine()}; {workers} worker processes, 1 thread each. Date: {today()}. Wall time: {elapsed / 60:.1f} min.
Command: `{command}`

FD-FMNIST = Frechet distance in the 128-d penultimate features of our Fashion-MNIST classifier, against the
statistics of the 10,000 test images (`builtin/stats/fmnist_test.npz`). It is **not FID** and not comparable to
published numbers. Every cell: {seeds} disjoint seed blocks of {samples} images (block b holds seeds b x {samples} to
(b + 1) x {samples} - 1), mean ± standard deviation over the blocks; the same seeds, hence the same initial noise, for
every solver and NFE. Grids: the distilled grid of the shipped coefficient files (`coefficients/data/`, picked by the
sampling policy) for AdaSDE and AMED; the paper schedules (samplers/presets.py) for the others: polynomial rho 7 for
euler and ipndm, logSNR for dpmpp_3m and unipc. AFS for the two-call-per-step solvers at odd NFE.

Converged reference: Heun, {ref_nfe} NFE on the model's default grid ({grid}), the same seed blocks, computed once per
block and shared by every solver and NFE. Against it, from the same initial noise:
- **FD vs converged**: FD-FMNIST between the solver's samples and the converged samples: the solver's error alone,
  without the model's own distance to the data.
- **RMSE to converged**: per image, the root mean square pixel difference to the converged image of the same seed,
  pixels in the [-1, 1] range (float, before 8-bit rounding); the mean over the block's images.

- Floor (train images vs test images, 60,000 / 10,000): **{_floor():.3f}**
- High-NFE reference (Heun, {ref_nfe} NFE, {grid}, {samples} images): **{_mean(ref_fd):.2f}** (mean over {seeds} seed
  blocks{ref_sd}; the converged model's own distance to the data)

## FD-FMNIST against the test set (lower is better; best per NFE in bold)

{md_table(["solver"] + [f"NFE {k}" for k in nfes], wide)}

## Against the converged model from the same noise (solver error alone)

{md_table(["solver", "NFE", "FD-FMNIST", "FD vs converged", "RMSE to converged ([-1, 1])"], long)}

## Verdict (issue 12 acceptance; FD-FMNIST, lower is better)

{chr(10).join(verdicts(by["fd"], nfes, headline))}

The same question by solver error alone:

{chr(10).join(second)}
{(chr(10) + "Missing coefficient files (not run): " + ", ".join(missing) + chr(10)) if missing else ""}
## CPU time per image

ms per image, one thread: sampling, FD-FMNIST features and the comparison with the converged images.

{md_table(["solver", "NFE", "ms / image"], speed)}
"""
    if tried:
        text += f"\n## What was tried (measured, not tuned on the metric)\n\n{tried}\n"
    return text


def _floor() -> float:
    from ..evaluation import fd_fmnist_reference, frechet_distance

    tr, te = fd_fmnist_reference("train"), fd_fmnist_reference("test")
    res = frechet_distance(tr.mu, tr.sigma, te.mu, te.sigma)
    return float(getattr(res, "value", res))
