"""AMED-Plugin with the predictor g_phi and the DPM-Solver++ base in the AMED reference's form (docs/ALGORITHMS.md
sections 4.3, 4.4 and 4.7): distillation, the file round trip through every door, and an independent re-implementation
of the DPM-Solver++ plugin step from the papers' formulas."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from adasde.cli import main
from adasde.coefficients import CoefficientFileError, Coefficients, load, save
from adasde.distill import teacher_trajectory
from adasde.distill.amed import distill_amed
from adasde.errors import UsageError
from adasde.models import load_model
from adasde.samplers import AMEDPredictor, get_sigmas, sample_amed_plugin, teacher_sigmas
from adasde.samplers.amed import plugin_solver
from adasde.samplers.baselines import sample_dpmpp_3m
from adasde.samplers.presets import initial_noise
from helpers.samplers import DiagGaussian


@pytest.fixture(scope="module")
def gmm():
    return load_model("testbed:gmm-error", d=16, K=4, rank=2)


@pytest.fixture(scope="module")
def fmnist():
    return load_model("builtin:fmnist").requires_grad_(False)


@pytest.fixture(scope="module")
def fmnist_plugin(fmnist):
    """A tiny AMED-Plugin(dpmpp) distillation on the built-in model, whose U-Net has a real bottleneck."""
    return distill_amed(fmnist, nfe=5, plugin="dpmpp", batch=4, trajectories=24, lr=0.02, init="random", seed=1)


# ------------------------------------------------------------------------------------------ (a) distillation
@pytest.mark.parametrize("base", ["ipndm", "dpmpp"])
def test_plugin_predictor_distils(gmm, base):
    """The default plugin distillation trains g_phi (section 4.4): the loss falls, the weights move, the file
    records the predictor, its config and the base's solver form, and the result follows the teacher (the base
    solver on the 3x finer grid, same solver form) better than the untrained base."""
    c = distill_amed(gmm, nfe=5, plugin=base, batch=32, trajectories=320, lr=0.05, init="random", seed=0)
    assert c.kind == "amed_plugin" and c.base == base and c.predictor and not c.training["constant"]
    assert c.predictor_config == AMEDPredictor(0.01, 0.0).config()
    assert c.solver_options == plugin_solver(base) == c.training["solver"]
    fresh = AMEDPredictor(0.01, 0.0, seed=0).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in c.predictor.items())
    losses = c.training["losses"]
    assert losses["final_total"] < 0.5 * losses["first_total"]
    x = initial_noise(range(7000, 7064), gmm.sample_shape, 80.0)
    fine = teacher_sigmas(c.schedule, c.num_points, 2, gmm.sigma_min, gmm.sigma_max, rho=c.rho, dtype=torch.float64)
    y = teacher_trajectory(gmm, x, fine.tolist(), 2, base, options=c.solver_options)[-1]
    grid = c.sigmas.float()
    err = lambda co: float((sample_amed_plugin(gmm, x, grid, coeffs=co, base=base, afs=True) - y)  # noqa: E731
                           .pow(2).mean())
    assert err(c) < 0.8 * err(None)


def test_plugin_predictor_reads_the_bottleneck(fmnist, fmnist_plugin):
    """On the built-in U-Net the trained predictor gives per-sample r (the bottleneck differs per sample), and zero
    features give exactly the stored constant tables (section 4.5)."""
    c = fmnist_plugin
    assert c.kind == "amed_plugin" and c.base == "dpmpp" and c.predictor
    assert c.training["losses"]["final_total"] < c.training["losses"]["first_total"]
    net = AMEDPredictor.from_coefficients(c)
    x = initial_noise(range(4), fmnist.sample_shape, float(c.sigmas[0]))
    s = c.sigmas.tolist()
    fmnist(x * 0.05, torch.full((4,), s[1]))  # a call at t_1: its bottleneck feeds the predictor
    net.requires_grad_(False)
    r, _, _ = net(fmnist.bottleneck(), s[1], s[2])
    assert float(r.std()) > 0
    for n in range(c.steps):
        zr, zc, za = net(None, torch.tensor([s[n]]), torch.tensor([s[n + 1]]))
        assert (float(zr), float(zc), float(za)) == pytest.approx((float(c.r[n, 0]), float(c.c[n, 0]),
                                                                   float(c.a[n, 0])), abs=1e-6)


def test_plugin_file_round_trips_and_samples_identically(fmnist, fmnist_plugin, tmp_path):
    """Save / load keeps predictor, config and solver form; the loaded file samples bit-identically to the record
    through the sampler, the registry/policy door (``generate``) and with its bottleneck features; zero features
    are the constant tables; the diffusers plugin scheduler refuses the multistep base."""
    from adasde.generate.loop import sample_batch
    from adasde.policy import ModelInfo, plan

    path = save(fmnist_plugin, tmp_path / "plugin.safetensors")
    back = load(path)
    assert back.kind == "amed_plugin" and back.base == "dpmpp" and back.solver_options == fmnist_plugin.solver_options
    assert back.predictor_config == fmnist_plugin.predictor_config
    assert all(torch.equal(back.predictor[k], v) for k, v in fmnist_plugin.predictor.items())
    grid = back.sigmas.float()
    x = initial_noise(range(3), fmnist.sample_shape, float(grid[0]))
    with torch.no_grad():
        mem = sample_amed_plugin(fmnist, x.clone(), grid, coeffs=fmnist_plugin, features=fmnist.bottleneck)
        disk = sample_amed_plugin(fmnist, x.clone(), grid, coeffs=back, features=fmnist.bottleneck)
        zero = sample_amed_plugin(fmnist, x.clone(), grid, coeffs=back)
        tables = dict(vars(back))
        tables.pop("source")
        const = Coefficients(**{**tables, "predictor": None, "predictor_config": None})
        constant = sample_amed_plugin(fmnist, x.clone(), grid, coeffs=const)
    assert torch.equal(mem, disk) and not torch.allclose(disk, zero, atol=1e-4)
    torch.testing.assert_close(zero, constant, rtol=0, atol=1e-5)
    p = plan(ModelInfo.of(fmnist), "amed_plugin", steps=back.steps, coefficients=path)
    assert p.coeffs is not None and p.options(fmnist)["features"] == fmnist.bottleneck
    torch.testing.assert_close(sample_batch(fmnist, p, range(3)), disk, rtol=0, atol=0)


def test_diffusers_plugin_scheduler_takes_the_constant_tables_of_a_predictor_file(gmm, tmp_path):
    pytest.importorskip("diffusers")
    from adasde.diffusers_scheduler import AMEDPluginScheduler

    c = distill_amed(gmm, nfe=4, afs=False, plugin="euler", batch=8, trajectories=16, seed=2)
    assert c.predictor
    with pytest.warns(UserWarning, match="predictor is replaced by its constant tables"):
        sch = AMEDPluginScheduler.from_coefficients(save(c, tmp_path / "e.safetensors"))
    assert sch.config.r == c.r.double().tolist()
    c.base = "dpmpp"
    c.solver_options = plugin_solver("dpmpp")
    with warnings.catch_warnings(), pytest.raises(UsageError, match="multistep bases"):
        warnings.simplefilter("ignore")
        AMEDPluginScheduler.from_coefficients(c)


def test_constant_option_and_cli(tmp_path, capsys):
    """``--constant`` keeps the per-step tables; the solver-form flags reach the file; misuse is one line, exit 2."""
    base = ["distill", "--model", "testbed:gmm-error", "--nfe", "5", "--trajectories", "32", "--batch", "16",
            "--method", "amed_plugin", "--no-progress"]
    assert main(base + ["--base", "dpmpp", "--out", str(tmp_path / "p.safetensors")]) == 0
    p = load(tmp_path / "p.safetensors")
    assert p.predictor and p.solver_options == {"max_order": 3, "predict_x0": True, "lower_order_final": True,
                                                "taylor_d2": False, "thresholding": True}
    assert main(base + ["--base", "dpmpp", "--constant", "--max-order", "2", "--no-thresholding",
                        "--out", str(tmp_path / "c.safetensors")]) == 0
    c = load(tmp_path / "c.safetensors")
    assert c.predictor is None and c.solver_options["max_order"] == 2 and not c.solver_options["thresholding"]
    capsys.readouterr()
    assert main(["distill", "--model", "testbed:gmm-error", "--nfe", "5", "--method", "amed", "--constant",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--constant only apply to --method amed_plugin" in capsys.readouterr().err
    assert main(base + ["--base", "dpmpp", "--max-order", "4", "--out", str(tmp_path / "y.safetensors")]) == 2
    assert "max_order for base 'dpmpp' must be an integer in 1..3" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- (b) defaults and file form
def test_dpmpp_plugin_defaults_are_the_reference_ones():
    """DPM-Solver++ base: max_order 3, lower-order-final, data prediction with dynamic thresholding (noise
    prediction: nothing to threshold); iPNDM: order 4, no lower-order-final (section 4.3)."""
    assert plugin_solver("dpmpp") == {"max_order": 3, "predict_x0": True, "lower_order_final": True,
                                      "taylor_d2": False, "thresholding": True}
    assert plugin_solver("dpmpp", predict_x0=False)["thresholding"] is False
    assert plugin_solver("ipndm") == {"max_order": 4, "predict_x0": None, "lower_order_final": False,
                                      "taylor_d2": None, "thresholding": None}
    with pytest.raises(ValueError, match="max_order for base 'ipndm' must be an integer in 1..4"):
        plugin_solver("ipndm", max_order=5)
    with pytest.raises(ValueError, match="unknown solver option"):
        plugin_solver("dpmpp", {"order": 2})
    model = lambda x, s, **kw: 3.0 * DiagGaussian()(x, s)  # noqa: E731 - data predictions well outside [-1, 1]
    grid = get_sigmas("polynomial", 5, 0.002, 80.0, rho=7.0, dtype=torch.float64)
    x = 80.0 * torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda **kw: sample_amed_plugin(model, x.clone(), grid, base="dpmpp", disable=True, **kw)  # noqa: E731
    default = run()
    assert torch.equal(default, run(max_order=3, lower_order_final=True, thresholding=True, predict_x0=True))
    assert not torch.allclose(default, run(thresholding=False))
    assert not torch.allclose(default, run(max_order=2, lower_order_final=False))


def test_the_file_solver_form_is_used_and_validated(tmp_path):
    """A file's solver_options are the sampler's defaults (explicit options still win); a bad form is refused."""
    model = lambda x, s, **kw: 3.0 * DiagGaussian()(x, s)  # noqa: E731
    grid = get_sigmas("polynomial", 5, 0.002, 80.0, rho=7.0, dtype=torch.float64)
    x = 80.0 * torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    co = Coefficients.untrained(grid, afs=False, kind="amed_plugin", base="dpmpp")
    co.solver_options = {"max_order": 2, "thresholding": False}
    co = load(save(co, tmp_path / "f.safetensors"))
    run = lambda **kw: sample_amed_plugin(model, x.clone(), grid, disable=True, **kw)  # noqa: E731
    assert torch.equal(run(coeffs=co), run(base="dpmpp", max_order=2, thresholding=False))
    assert torch.equal(run(coeffs=co, max_order=3), run(base="dpmpp", max_order=3, thresholding=False))
    co.solver_options = {"max_order": 7}
    with pytest.raises(CoefficientFileError, match="max_order for base 'dpmpp' must be an integer in 1..3"):
        save(co, tmp_path / "bad.safetensors")
    co.kind, co.base = "adasde", None
    co.solver_options = {"max_order": 2}
    with pytest.raises(CoefficientFileError, match="kind 'adasde' carries AMED-Plugin solver_options"):
        save(co, tmp_path / "bad.safetensors")


def test_dpmpp_teacher_uses_the_plugin_form():
    """The dpmpp teacher of a plugin distillation is DPM-Solver++ in the same form (reference: the teacher is the
    base solver on the fine grid): order 3, lower-order-final, thresholding."""
    model = lambda x, s, **kw: 3.0 * DiagGaussian()(x, s)  # noqa: E731
    fine = teacher_sigmas("polynomial", 4, 2, 0.002, 80.0, rho=7.0, dtype=torch.float64)
    x = 80.0 * torch.randn(2, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ys = teacher_trajectory(model, x, fine.tolist(), 2, "dpmpp", options=plugin_solver("dpmpp"))
    ref = sample_dpmpp_3m(model, x.clone(), fine, lower_order_final=True, thresholding=True, disable=True)
    torch.testing.assert_close(ys[-1], ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ (c) independent reference from the formulas
def _threshold(d: torch.Tensor) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, as DPM-Solver++ section 5 uses it): s = max(q_0.995(|D|), 1)
    per sample, D <- clip(D, -s, s) / s."""
    q = torch.quantile(d.abs().flatten(1), 0.995, dim=1).clamp(min=1.0).view(-1, *[1] * (d.ndim - 1))
    return torch.maximum(torch.minimum(d, q), -q) / q


def _dpmpp_update(x: torch.Tensor, hist: list[tuple[torch.Tensor, torch.Tensor]], t: torch.Tensor, order: int,
                  c: torch.Tensor, data: bool) -> torch.Tensor:
    """DPM-Solver++ multistep in sigma form (lambda = -log sigma), orders 1-3, with the model-term sum scaled by c
    (AMED-Plugin's direction scale).  ``hist``: (sigma, model output) pairs, most recent last."""
    col = lambda v: v.reshape(-1, *[1] * (x.ndim - 1))  # noqa: E731
    (s0, m0) = hist[-1]
    s0, t = col(s0), col(t)
    h = torch.log(s0) - torch.log(t)
    e = torch.expm1(-h) if data else torch.expm1(h)
    p2 = e / h + 1 if data else e / h - 1
    p3 = p2 / h - 0.5
    if order == 1:
        term = e * m0
    else:
        s1, m1 = col(hist[-2][0]), hist[-2][1]
        r0 = (torch.log(s1) - torch.log(s0)) / h
        d10 = (m0 - m1) / r0
        if order == 2:
            term = e * m0 + 0.5 * e * d10
        else:
            s2, m2 = col(hist[-3][0]), hist[-3][1]
            r1 = (torch.log(s2) - torch.log(s1)) / h
            d11 = (m1 - m2) / r1
            d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
            d2 = (d10 - d11) / (r0 + r1)
            term = e * m0 - p2 * d1 + p3 * d2 if data else e * m0 + p2 * d1 + p3 * d2
    return (t / s0) * x - col(c) * term if data else x - col(c) * t * term


def _plugin_reference(model: Any, pred: AMEDPredictor, feats: Any, x: torch.Tensor, grid: list[float], *,
                      max_order: int, lof: bool, afs: bool, data: bool = True) -> torch.Tensor:
    """AMED-Plugin on DPM-Solver++ written from the papers: t_s = t_{n+1}^r t_n^(1 - r) with (r, c, a) from g_phi on
    the bottleneck of the call at t_n (zeros with AFS), the model at (x_s, a t_s), c scaling the second half-step's
    model terms; order k at the k-th of K = 2 (N - 1) sub-steps while k < max_order, then min(max_order, K - k + 1)
    with lower-order-final (else min(max_order, k)); thresholded data predictions."""
    B, K = x.shape[0], 2 * (len(grid) - 1)
    hist: list[tuple[torch.Tensor, torch.Tensor]] = []
    k = 0

    def order() -> int:
        return k if k < max_order or not lof else min(max_order, K - k + 1)

    def out(x_: torch.Tensor, den: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _threshold(den) if data else (x_ - den) / t.reshape(-1, *[1] * (x.ndim - 1))

    for n in range(len(grid) - 1):
        tn = torch.full((B,), grid[n], dtype=x.dtype)
        if afs and n == 0:
            den = x - grid[0] * x / math.sqrt(1 + grid[0] ** 2)
            h = torch.zeros(B, 64, dtype=x.dtype)
        else:
            den = model(x, tn)
            h = feats()
        r, c, a = (v.to(x.dtype) for v in pred(h, grid[n], grid[n + 1]))
        ts = grid[n + 1] ** r * grid[n] ** (1 - r)
        hist.append((tn, out(x, den, tn)))
        k += 1
        xs = _dpmpp_update(x, hist, ts, order(), torch.ones(B, dtype=x.dtype), data)
        hist.append((ts, out(xs, model(xs, a * ts), ts)))
        k += 1
        x = _dpmpp_update(xs, hist, torch.full((B,), grid[n + 1], dtype=x.dtype), order(), c, data)
    return x


@pytest.mark.parametrize("points", [2, 4])
@pytest.mark.parametrize("max_order,lof", [(3, True), (3, False), (2, True), (1, True)])
@pytest.mark.parametrize("afs", [False, True])
def test_dpmpp_plugin_matches_the_paper_formulas(fmnist, points, max_order, lof, afs):
    """Our sampler against the re-implementation above on the built-in U-Net (float64, real bottleneck features,
    thresholding active), with per-sample (r, c, a) from one predictor: equal to float precision."""
    model = load_model("builtin:fmnist", dtype=torch.float64).requires_grad_(False)
    pred = AMEDPredictor(0.05, 0.2, seed=3).double()
    with torch.no_grad():
        for head in (pred.head_r, pred.head_c, pred.head_a):
            head.weight.mul_(3)
    grid = get_sigmas("polynomial", points, model.sigma_min, model.sigma_max, rho=7.0, dtype=torch.float64)
    x = 80.0 * torch.randn(3, *model.sample_shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        ours = sample_amed_plugin(model, x.clone(), grid, base="dpmpp", predictor=pred, features=model.bottleneck,
                                  afs=afs, max_order=max_order, lower_order_final=lof, disable=True)
        ref = _plugin_reference(model, pred, model.bottleneck, x.clone(), grid.tolist(), max_order=max_order,
                                lof=lof, afs=afs)
        assert not torch.equal(_threshold(model(x, grid[:1].expand(3))), model(x, grid[:1].expand(3)))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_dpmpp_plugin_noise_prediction_matches_the_paper_formulas():
    """The noise-prediction form (the reference's LDM / SD setting; nothing thresholded) against the same code."""
    model = DiagGaussian()
    pred = AMEDPredictor(0.05, 0.2, seed=4).double()
    grid = get_sigmas("polynomial", 5, 0.002, 80.0, rho=7.0, dtype=torch.float64)
    x = 80.0 * torch.randn(3, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ours = sample_amed_plugin(model, x.clone(), grid, base="dpmpp", predictor=pred, predict_x0=False, disable=True)
    zeros = lambda: torch.zeros(3, 64, dtype=torch.float64)  # noqa: E731
    ref = _plugin_reference(model, pred, zeros, x.clone(), grid.tolist(), max_order=3, lof=True, afs=False,
                            data=False)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
