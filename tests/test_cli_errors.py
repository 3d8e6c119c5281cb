"""Every user mistake on every sub-command ends in one line on stderr, exit status 2, no traceback, and the line names
the value or file at fault (docs/ARCHITECTURE.md, "Errors").  Each case runs ``adasde.cli.main`` in-process."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import adasde
import numpy as np
import pytest
import torch
from adasde.cli import main
from adasde.coefficients import Coefficients, ModelIdentity, save
from adasde.samplers import get_sigmas
from PIL import Image


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"dir": d}
    (d / "notes.txt").write_text("not a coefficient file\n")
    f["text"] = d / "notes.txt"
    f["missing"] = d / "missing.safetensors"
    gmm = Coefficients.untrained(get_sigmas("polynomial", 4, 0.01, 20.0, dtype=torch.float64), afs=True,
                                 schedule="polynomial", rho=7.0,
                                 model=ModelIdentity(family="gmm", prediction="edm", sigma_min=0.01, sigma_max=20.0))
    f["gmm"] = save(gmm, d / "gmm-nfe5.safetensors")
    shipped = Path(adasde.__file__).parent / "coefficients" / "data" / "builtin-fmnist-amed-nfe5.safetensors"
    f["amed"] = d / "amed-nfe5.safetensors"
    shutil.copyfile(shipped, f["amed"])
    np.savez(d / "garbage.npz", x=np.zeros(3))
    f["bad_npz"] = d / "garbage.npz"
    np.savez(d / "ref4.npz", mu=np.zeros(4), sigma=np.eye(4))
    f["ref4"] = d / "ref4.npz"
    np.savez(d / "ref128.npz", mu=np.zeros(128), sigma=np.eye(128), adasde_meta=np.array(
        '{"feature_net": "fmnist-classifier"}'))
    f["ref128"] = d / "ref128.npz"
    (d / "good").mkdir()
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(d / "good" / "a.png")
    f["good"] = d / "good"
    (d / "imgs").mkdir()
    (d / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    f["imgs"] = d / "imgs"
    (d / "used").mkdir()
    (d / "used" / "000000.png").write_bytes(b"\x89PNG old run")
    f["used"] = d / "used"
    marker = d / "EXECUTED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (d / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    f["evil"], f["marker"] = d / "evil.pkl", marker
    return f


S = ["sample", "--model", "builtin:fmnist", "--no-progress"]
F = ["fid", "sample", "--model", "builtin:fmnist", "--seeds", "0-1", "--no-progress"]
D = ["distill", "--model", "testbed:gmm-error", "--trajectories", "16", "--batch", "8", "--no-progress"]

CASES: list[tuple[str, list[str], list[str]]] = [
    # sample
    ("sample-bad-seeds", [*S, "--nfe", "5", "--seeds", "0-x", "--grid", "{dir}/g.png"], ["--seeds", "0-x"]),
    ("sample-empty-range", [*S, "--nfe", "5", "--seeds", "5-1", "--grid", "{dir}/g.png"], ["5-1"]),
    ("sample-batch-0", [*S, "--nfe", "5", "--batch", "0", "--grid", "{dir}/g.png"], ["--batch", "0"]),
    ("sample-no-output", [*S, "--nfe", "5"], ["--out", "--grid"]),
    ("sample-no-plan", [*S, "--grid", "{dir}/g.png"], ["--nfe", "--steps"]),
    ("sample-unknown-spec", ["sample", "--model", "nope:x", "--nfe", "5", "--grid", "{dir}/g.png"], ["nope:x"]),
    ("sample-unknown-builtin", ["sample", "--model", "builtin:cifar", "--nfe", "5", "--grid", "{dir}/g.png"],
     ["cifar"]),
    ("sample-unknown-sampler", [*S, "--sampler", "nope", "--nfe", "5", "--grid", "{dir}/g.png"], ["nope"]),
    ("sample-nfe-0", [*S, "--nfe", "0", "--grid", "{dir}/g.png"], ["--nfe", "0"]),
    ("sample-steps-0", [*S, "--steps", "0", "--grid", "{dir}/g.png"], ["--steps", "0"]),
    ("sample-missing-coeffs", [*S, "--coeffs", "{missing}", "--grid", "{dir}/g.png"], ["missing.safetensors"]),
    ("sample-text-as-coeffs", [*S, "--coeffs", "{text}", "--grid", "{dir}/g.png"], ["notes.txt"]),
    ("sample-wrong-family", [*S, "--coeffs", "{gmm}", "--grid", "{dir}/g.png"], ["gmm-nfe5.safetensors", "gmm"]),
    ("sample-wrong-kind", [*S, "--coeffs", "{amed}", "--grid", "{dir}/g.png"], ["amed-nfe5.safetensors", "amed"]),
    ("sample-wrong-nfe", [*S, "--coeffs", "{amed}", "--sampler", "amed", "--nfe", "7", "--grid", "{dir}/g.png"],
     ["amed-nfe5.safetensors", "NFE 7"]),
    ("sample-training-free-coeffs", [*S, "--sampler", "euler", "--coeffs", "{amed}", "--grid", "{dir}/g.png"],
     ["euler"]),
    ("sample-bad-schedule", [*S, "--nfe", "5", "--schedule", "zigzag", "--grid", "{dir}/g.png"], ["zigzag"]),
    ("sample-rho-alone", [*S, "--nfe", "5", "--rho", "3", "--grid", "{dir}/g.png"], ["--rho"]),
    ("sample-prompts-pixel-model", [*S, "--nfe", "5", "--prompt", "a cat", "--grid", "{dir}/g.png"],
     ["builtin:fmnist", "prompts"]),
    ("sample-missing-prompts", [*S, "--nfe", "5", "--prompts", "{dir}/none.txt", "--grid", "{dir}/g.png"],
     ["none.txt"]),
    ("sample-no-cuda", [*S, "--nfe", "5", "--device", "cuda:3", "--grid", "{dir}/g.png"], ["cuda"]),
    ("sample-out-is-file", [*S, "--nfe", "5", "--out", "{text}"], ["notes.txt"]),
    ("sample-used-folder", [*S, "--nfe", "5", "--seeds", "0-1", "--out", "{used}"], ["used", "PNG"]),
    # fid
    ("fid-ref-missing-data", ["fid", "ref", "--data", "{dir}/nodata", "--dest", "{dir}/r.npz", "--no-progress"],
     ["nodata"]),
    ("fid-ref-unknown-net", ["fid", "ref", "--data", "{imgs}", "--dest", "{dir}/r.npz", "--net", "vgg",
                             "--no-progress"],
     ["vgg"]),
    ("fid-calc-missing-images", ["fid", "calc", "--images", "{dir}/noimgs", "--ref", "{ref4}", "--no-progress"],
     ["noimgs"]),
    ("fid-calc-missing-ref", ["fid", "calc", "--images", "{imgs}", "--ref", "{dir}/none.npz", "--no-progress"],
     ["none.npz"]),
    ("fid-calc-bad-ref", ["fid", "calc", "--images", "{good}", "--ref", "{bad_npz}", "--net", "fmnist",
                          "--no-progress"],
     ["garbage.npz"]),
    ("fid-calc-corrupt-image", ["fid", "calc", "--images", "{imgs}", "--ref", "{ref128}", "--no-progress"],
     ["broken.png"]),
    ("fid-sample-missing-ref", [*F, "--sampler", "euler", "--nfe", "3", "--ref", "{dir}/none.npz"], ["none.npz"]),
    ("fid-sample-bad-seeds", [*F, "--sampler", "euler", "--nfe", "3", "--ref", "{ref4}", "--seeds", "a"], ["a"]),
    ("fid-sample-net-mismatch", [*F, "--sampler", "euler", "--nfe", "3", "--ref", "{ref4}", "--net", "fmnist"],
     ["ref4.npz"]),
    # distill
    ("distill-no-plan", [*D, "--out", "{dir}/d.safetensors"], ["--steps", "--nfe"]),
    ("distill-steps-0", [*D, "--steps", "0", "--out", "{dir}/d.safetensors"], ["--steps", "0"]),
    ("distill-unknown-spec", ["distill", "--model", "nope:x", "--nfe", "5", "--out", "{dir}/d.safetensors"],
     ["nope:x"]),
    ("distill-bad-schedule", [*D, "--nfe", "5", "--schedule", "zigzag", "--out", "{dir}/d.safetensors"], ["zigzag"]),
    ("distill-amed-feature-loss", [*D, "--nfe", "5", "--method", "amed", "--loss", "feature", "--out",
                                   "{dir}/d.safetensors"], ["--loss"]),
    ("distill-unreachable-nfe", [*D, "--nfe", "4", "--K", "2", "--out", "{dir}/d.safetensors"], ["NFE 4"]),
    # coefficients
    ("coefficients-show-missing", ["coefficients", "show", "{missing}"], ["missing.safetensors"]),
    ("coefficients-show-text", ["coefficients", "show", "{text}"], ["notes.txt"]),
    ("coefficients-import-evil", ["coefficients", "import-official", "{evil}", "{dir}/o.safetensors"], ["evil.pkl"]),
    # demo
    ("demo-nfe-0", ["demo", "--nfe", "0", "--out", "{dir}/demo", "--no-progress"], ["--nfe 0"]),
    ("demo-one-sample", ["demo", "--samples", "1", "--out", "{dir}/demo", "--no-progress"], ["--samples"]),
]


@pytest.mark.parametrize(("args", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_line_exit_2(files: dict[str, Path], args: list[str], needles: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not files["marker"].exists()
