"""``adasde bench refine`` end to end at toy size (bench/refine.py): the report's tables agree with each other, with
the records' own refinement results and with an independent Frechet distance of one baseline."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import pytest
from adasde import coefficients
from adasde.cli import main
from adasde.distill import distill
from adasde.distill.refine import refine
from adasde.models import load_model

TINY = dict(trajectories=64, heldout=64, batch=16)
SAMPLES, REPEATS = 200, 2


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every Markdown table of the report, keyed by the heading above it, as rows of {header: cell}."""
    out: dict[str, list[dict[str, str]]] = {}
    heading, lines = "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip().strip("*") for c in lines[i].strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                i += 1
            out.setdefault(heading, rows)
            continue
        i += 1
    return out


def close(a: float, b: float, rel: float = 2e-3, abs_: float = 6e-4) -> bool:
    return abs(a - b) <= rel * abs(b) + abs_


def grid_text(vals: list[float]) -> str:
    return " / ".join(f"{v:.4g}" for v in vals)


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, coefficients.Coefficients]]:
    """A stand-in coefficient folder: a kept refinement, a refused one, a file without a record, the rest missing."""
    d = tmp_path_factory.mktemp("builtin")
    gmm = load_model("testbed:gmm-error")
    kept = refine(gmm, distill(gmm, nfe=3, trajectories=64, batch=16), **TINY)
    refused = refine(gmm, distill(gmm, nfe=5, trajectories=64, batch=16), **TINY, lr=50.0)  # ruins the solver
    shipped = coefficients.load(Path(coefficients.__file__).parent / "data" / "builtin-fmnist-amed-nfe5.safetensors")
    plain = dataclasses.replace(shipped, training={k: v for k, v in shipped.training.items() if k != "refine"})
    files = {"builtin-fmnist-adasde-nfe3.safetensors": kept, "builtin-fmnist-adasde-nfe5.safetensors": refused,
             "builtin-fmnist-amed-nfe5.safetensors": plain}
    for name, c in files.items():
        coefficients.save(c, d / name)
    return d, files


@pytest.fixture(scope="module")
def report(builtin_dir, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("out")
    rc = main(["bench", "refine", "--nfe", "3", "--repeats", str(REPEATS), "--trajectories", "64", "--samples",
               str(SAMPLES), "--refine-trajectories", "64", "--refine-heldout", "64", "--builtin-dir",
               str(builtin_dir[0]), "--no-progress", "--out-dir", str(out)])
    assert rc == 0
    return (out / "refine.md").read_text(encoding="utf-8")


def test_per_seed_rows_are_consistent(report: str) -> None:
    rows = tables(report)["Per seed"]
    assert sorted((r["Method"], r["seed"]) for r in rows) == sorted(
        (m, str(s)) for m in ("AdaSDE", "AMED-Solver") for s in range(REPEATS))
    for r in rows:
        b, a = float(r["FD before"]), float(r["FD after"])
        assert close(float(r["FD after/before"]), a / b), r
        hb, ha = float(r["held-out before"]), float(r["held-out after"])
        assert close(float(r["held-out after/before"]), ha / hb), r
        assert (r["kept"] == "yes") == (ha < hb), r  # kept exactly when the held-out loss fell
        if r["kept"] == "no":  # a refused refinement returns the start record: the same samples
            assert r["FD after"] == r["FD before"], r


def test_summary_agrees_with_the_per_seed_rows(report: str) -> None:
    t = tables(report)
    seeds = t["Per seed"]
    summary = t["FD before and after refinement"]
    assert [r["Method"] for r in summary] == ["AdaSDE", "AMED-Solver"]
    for s in summary:
        mine = [r for r in seeds if r["Method"] == s["Method"] and r["NFE"] == s["NFE"]]
        mine.sort(key=lambda r: int(r["seed"]))
        b = [float(r["FD before"]) for r in mine]
        a = [float(r["FD after"]) for r in mine]
        assert s["per seed before"] == " / ".join(r["FD before"] for r in mine)
        assert s["per seed after"] == " / ".join(r["FD after"] for r in mine)
        mean_b, sd_b = (float(v) for v in s["FD before (mean ± sd)"].split("±"))
        mean_a, sd_a = (float(v) for v in s["FD after (mean ± sd)"].split("±"))
        assert close(mean_b, statistics.fmean(b)) and close(mean_a, statistics.fmean(a))
        assert close(sd_b, statistics.stdev(b)) and close(sd_a, statistics.stdev(a))
        assert close(float(s["after/before"]), statistics.fmean(a) / statistics.fmean(b))
        assert s["kept"] == f"{sum(r['kept'] == 'yes' for r in mine)}/{len(mine)}"
        assert close(float(s["worst/median before"]), max(b) / statistics.median(b), abs_=0.006)
        assert close(float(s["worst/median after"]), max(a) / statistics.median(a), abs_=0.006)
        verdict = next(v for v in report.splitlines() if v.startswith(f"- {s['Method']} NFE {s['NFE']}:"))
        assert ("wins on the mean" in verdict) == (statistics.fmean(a) < statistics.fmean(b)), verdict


def test_baseline_row_matches_an_independent_frechet_distance(report: str) -> None:
    from adasde.samplers.baselines import sample_ipndm
    from adasde.samplers.presets import initial_noise, preset
    from adasde.testbeds.metrics import frechet_distance

    rows = {r["Solver"]: r for r in tables(report)["Training-free baselines on the same sampling seeds (paper grids, "
                                                    "no AFS)"]}
    assert set(rows) == {"iPNDM", "DPM-Solver++(3M)", "UniPC"}
    model = load_model("testbed:gmm-error")
    sig, opt = preset("ipndm", 3, model.sigma_min, model.sigma_max)
    fds = []
    for k in range(REPEATS):  # the documented seed blocks
        seeds = list(range(10**6 + k * SAMPLES, 10**6 + (k + 1) * SAMPLES))
        x = sample_ipndm(model, initial_noise(seeds, model.sample_shape, model.sigma_max), sig, **opt)
        fds.append(frechet_distance(x, model.target))
    mean = float(rows["iPNDM"]["NFE 3"].split("±")[0])
    assert close(mean, statistics.fmean(fds), rel=1e-3, abs_=1e-4)


def test_builtin_section_reports_the_records(report: str, builtin_dir) -> None:
    _, files = builtin_dir
    rows = {r["File"]: r for r in tables(report)["2. Built-in Fashion-MNIST model: the shipped files' refinement "
                                                 "records"]}
    assert len(rows) == 8
    for name, c in files.items():
        r, rec = rows[name], c.training.get("refine")
        if rec is None:
            assert r["status"] == "no refine record" and r["grid before"] == grid_text(c.sigmas.tolist())
            continue
        assert r["status"] == "refined"
        assert math.isclose(float(r["held-out before"]), rec["heldout_before"], rel_tol=1e-4)
        assert math.isclose(float(r["held-out after"]), rec["heldout_after"], rel_tol=1e-4)
        assert close(float(r["after/before"]), rec["heldout_after"] / rec["heldout_before"])
        assert r["kept"] == ("yes" if rec["kept"] else "no")
        assert r["grid before"] == grid_text(rec["start_sigmas"])
        assert r["grid after"] == grid_text(c.sigmas.tolist())
        if not rec["kept"]:
            assert r["grid after"] == r["grid before"]
        else:
            assert r["grid after"] != r["grid before"]  # the interior point moved
    assert rows["builtin-fmnist-adasde-nfe3.safetensors"]["kept"] == "yes"
    assert rows["builtin-fmnist-adasde-nfe5.safetensors"]["kept"] == "no"
    assert [n for n, r in rows.items() if r["status"] == "missing"] == [
        n for n in rows if n not in files]
    assert "Command: `adasde bench refine --nfe 3 --repeats 2 --trajectories 64 --samples 200" in report


def test_bad_values_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, needle in ((["--repeats", "0"], "--repeats"), (["--refine-passes", "0"], "--refine-passes")):
        assert main(["bench", "refine", *argv, "--out-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "refine.md").exists()
