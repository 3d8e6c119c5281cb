"""The command line stays light (no torch while building the parser), has one progress flag, never overwrites a
committed benchmark result by default and names model weights files for what they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "numpy", "scipy", "PIL", "safetensors")


def _py(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_build_parser_imports_no_torch() -> None:
    r = _py("import sys; from adasde.cli import build_parser; build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


@pytest.mark.parametrize("argv", [["--help"], ["sample", "--help"], ["distill", "--help"], ["fid", "ref", "--help"],
                                  ["bench", "builtin", "--help"], ["coefficients", "show", "--help"],
                                  ["demo", "--help"], ["train-builtin", "--help"]])
def test_help_imports_no_torch(argv: list[str]) -> None:
    code = (f"import sys\nfrom adasde.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as e:\n"
            f"    code = e.code\nprint('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\nsys.exit(code)")
    r = _py(code)
    assert r.returncode == 0, r.stderr
    assert "usage: adasde" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_lazy_packages_still_export_their_api() -> None:
    import adasde.coefficients as co
    import adasde.distill as di
    import adasde.evaluation as ev
    import adasde.loaders as lo
    from adasde.evaluation import cli as ev_cli
    from adasde.evaluation import reference

    assert ev_cli.LAYOUTS == reference.LAYOUTS
    for pkg in (co, di, ev, lo):
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, (pkg.__name__, name)
        with pytest.raises(AttributeError):
            pkg.no_such_name  # noqa: B018
    assert ev.get_feature_net is ev.load_feature_net
    from adasde.coefficients import load  # the ``from X import name`` form goes through __getattr__ too

    assert load is co.load


def test_one_progress_flag_and_deprecated_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    from adasde.cli import build_parser

    parser = build_parser()
    for argv in (["sample", "--model", "m"], ["distill", "--model", "m", "--out", "o"], ["demo"],
                 ["train-builtin"], ["fid", "calc", "--images", "i", "--ref", "r"], ["bench", "builtin"]):
        assert parser.parse_args(argv + ["--no-progress"]).no_progress is True, argv
        assert parser.parse_args(argv).no_progress is False, argv
    args = parser.parse_args(["fid", "calc", "--images", "i", "--ref", "r", "--quiet"])
    assert args.no_progress is True
    assert "--quiet is deprecated, use --no-progress" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["fid", "calc", "--help"])
    assert "--quiet" not in capsys.readouterr().out  # hidden


def test_bench_report_never_overwrites_a_committed_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adasde.bench import common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    committed = tmp_path / "builtin.md"
    committed.write_text("committed result\n")
    first = common.write_report("builtin", "new 1\n")
    second = common.write_report("builtin", "new 2\n")
    assert committed.read_text() == "committed result\n"
    assert first != committed and first.name.startswith("builtin-") and first.read_text() == "new 1\n"
    assert second not in (committed, first) and second.read_text() == "new 2\n"
    assert first.read_text() == "new 1\n"
    # an explicit --out-dir replaces
    out = tmp_path / "explicit"
    assert common.write_report("builtin", "a\n", out) == out / "builtin.md"
    assert common.write_report("builtin", "b\n", out).read_text() == "b\n"
    # a fresh name still goes to <name>.md
    assert common.write_report("fresh", "x\n") == tmp_path / "fresh.md"


def test_coefficients_show_on_model_weights_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    from adasde.cli import main

    weights = Path(__file__).resolve().parents[1] / "builtin" / "weights" / "fmnist_unet.safetensors"
    assert main(["coefficients", "show", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "model weights file" in err and "not a coefficient file" in err
    assert "re-save" not in err


def test_coefficients_show_on_foreign_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plain safetensors state dict (no adasde metadata) is also called model weights, not 'corrupt'."""
    import torch
    from adasde.cli import main
    from safetensors.torch import save_file

    f = tmp_path / "unet.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(f))
    assert main(["coefficients", "show", str(f)]) == 2
    err = capsys.readouterr().err
    assert "model weights" in err and "re-save" not in err
