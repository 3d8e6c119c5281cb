"""Schedules against the worked examples of docs/ALGORITHMS.md section 2, teacher sub-grids, the overhead bench CLI."""

from __future__ import annotations

import pytest
import torch
from adasde.samplers import get_sigmas, teacher_sigmas


def _sd15_sigmas() -> torch.Tensor:
    """The 1000 SD1.x sigmas (scaled-linear betas 0.00085 -> 0.012)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    return ((1 - abar) / abar).sqrt()


@pytest.mark.parametrize("n,expected", [
    (3, [80, 2.82369, 0.002]),
    (4, [80, 6.95024, 1.28667, 0.002]),
    (5, [80, 11.7343, 2.82369, 0.856462, 0.002]),
    (6, [80, 16.5062, 4.74634, 1.75411, 0.650216, 0.002]),
])
def test_time_uniform_examples(n: int, expected: list[float]) -> None:
    got = get_sigmas("time_uniform", n, 0.002, 80.0, dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=2e-5, atol=0)


def test_discrete_sd15_example() -> None:
    got = get_sigmas("discrete", 6, model_sigmas=_sd15_sigmas(), dtype=torch.float64)
    expected = torch.tensor([14.6146, 5.0924, 2.2797, 1.1629, 0.5712, 0.02917], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=0)


@pytest.mark.parametrize("kind", ["polynomial", "logsnr", "time_uniform"])
def test_teacher_grid_contains_the_student_grid(kind: str) -> None:
    student = get_sigmas(kind, 5, 0.002, 80.0)
    teacher = teacher_sigmas(kind, 5, 3, 0.002, 80.0)
    assert teacher.numel() == 4 * 4 + 1
    assert torch.equal(teacher[::4], student)
    assert (teacher[1:] < teacher[:-1]).all()


def test_schedule_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'karras'"):
        get_sigmas("karras", 5, 0.002, 80.0)
    with pytest.raises(ValueError, match="sigma_min=80.0, sigma_max=0.002"):
        get_sigmas("logsnr", 5, 80.0, 0.002)
    with pytest.raises(ValueError, match="needs the model's sigma table"):
        get_sigmas("discrete", 5)


def test_overhead_bench_runs_and_reports(tmp_path) -> None:
    """Smoke test of `adasde bench overhead` on a tiny latent (no timing assertions)."""
    from adasde.cli import main

    n = torch.get_num_threads()
    try:
        assert main(["bench", "overhead", "--shape", "1,1,4,4", "--steps", "3", "--repeats", "1", "--warmup", "1",
                     "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(n)
    text = (tmp_path / "overhead.md").read_text()
    for name in ("euler", "heun", "dpm_2", "dpmpp_3m", "ipndm", "unipc", "adasde", "amed", "amed_plugin"):
        assert f"| {name} |" in text
    assert "AdaSDE target: ratio < 3" in text and "Machine:" in text
