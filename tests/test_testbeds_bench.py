"""``adasde bench solvers --quick`` writes a complete report (real samplers, real testbeds)."""

from __future__ import annotations

import re

from adasde.cli import main
from adasde.samplers import SAMPLERS


def test_bench_solvers_quick(tmp_path, capsys):
    assert main(["bench", "solvers", "--quick", "--samples", "120", "--nfes", "3", "6", "--ref-steps", "40",
                 "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "solvers.md").read_text()
    assert "Machine:" in text and "Date:" in text and "120 samples" in text
    for spec in ("testbed:gmm", "testbed:gmm-error"):
        assert f"## `{spec}`" in text
    assert "Controlled-error denoiser" in text and "Floors (exact samples, n = 120)" in text
    for name in SAMPLERS:
        assert re.search(rf"^\| {name} \| [-0-9.e+]+ \| [-0-9.e+]+ \|$", text, re.M), name
    assert text.count("### FD to exact moments") == 2
    assert "Paper pattern check" in text
    assert "Reference solve (80 NFE" in text  # 40 Heun steps
    assert "nan" not in text.lower()
