"""``adasde bench guidance`` end to end on a few images: the report table, its command line and the measured
effect of classifier guidance on the built-in model."""

from __future__ import annotations

from pathlib import Path

from adasde.cli import main


def test_bench_guidance_writes_the_table(tmp_path: Path) -> None:
    assert main(["bench", "guidance", "--samples", "20", "--nfes", "3", "--solvers", "euler", "--rates", "8",
                 "--classes", "1", "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "guidance.md").read_text()
    assert "Command: `adasde bench guidance --samples 20 --nfes 3 --solvers euler --classes 1 --rates 8`" in text
    row = next(line for line in text.splitlines() if line.startswith("| euler | 3 |"))
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    unguided, guided = (float(c.rstrip(" %")) for c in cells[3:5])
    assert guided > unguided + 30  # class 1 (trousers) requested for all 20 seeds
