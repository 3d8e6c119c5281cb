"""Coefficient files under hostile conditions: malformed files in a lookup folder, torn reads with a concurrent
writer, absurd finite values, checkpoints beside outputs, permissions, and a seeded fuzz over the reader."""

from __future__ import annotations

import json
import logging
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from adasde.coefficients import CoefficientFileError, Coefficients, ModelIdentity, find_coefficients, load, save
from adasde.coefficients import io as cio
from adasde.coefficients.lookup import CoefficientEntry, matching
from adasde.errors import AdasdeError
from adasde.samplers import AMEDPredictor, get_sigmas
from helpers.fuzz import corrupt
from safetensors.torch import save as st_save

ROOT = Path(__file__).resolve().parents[1]


def make(steps: int = 3, family: str = "gmm", rho: float = 1.0, seed: int = 0, **kw) -> Coefficients:
    sig = get_sigmas("time_uniform", steps + 1, 0.002, 80.0)
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(steps, 1, generator=g)  # noqa: E731
    return Coefficients(r=u(0.1, 0.9), a=u(0.8, 1.2), c=u(0.95, 1.05), gamma=u(0, 1e-3), w=torch.ones(steps, 1),
                        sigmas=sig, rho=rho, model=ModelIdentity(family=family, prediction="edm"),
                        training={"seed": seed}, **kw)


def raw_file(path: Path, meta: dict, tensors: dict | None = None) -> Path:
    """A safetensors file with arbitrary (possibly malformed) adasde metadata, written byte by byte."""
    tensors = tensors or {"r": torch.full((3, 1), 0.5)}
    path.write_bytes(st_save(tensors, metadata={"adasde": json.dumps(meta)}))
    return path


def header_file(path: Path, header: dict) -> Path:
    """A safetensors file with an arbitrary header JSON (no tensor data)."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


# ------------------------------------------------------------------------------------------ item 3: lookup
def test_malformed_files_do_not_break_lookup(tmp_path, caplog):
    good = save(make(), tmp_path / "a_good.safetensors")
    meta = cio.to_metadata(make())
    bad_model = raw_file(tmp_path / "b_model_string.safetensors", dict(meta, model="sd15"))
    bad_steps = raw_file(tmp_path / "c_steps_string.safetensors", dict(meta, steps="3"))
    huge = header_file(tmp_path / "d_huge_offsets.safetensors",
                       {"r": {"dtype": "F32", "shape": [3, 1], "data_offsets": [0, 10**30]},
                        "__metadata__": {"adasde": json.dumps(meta)}})
    nested = tmp_path / "e_nested.safetensors"
    deep = ("[" * 100000 + "]" * 100000).encode()
    nested.write_bytes(struct.pack("<Q", len(deep)) + deep)
    for p in (bad_model, bad_steps, huge, nested):
        with pytest.raises(CoefficientFileError):
            cio.read_header(p)
        with pytest.raises(CoefficientFileError):
            load(p)
    with caplog.at_level(logging.WARNING, logger="adasde"):
        found = matching("gmm", dirs=[tmp_path], kind=None)
        loaded = find_coefficients("gmm", dirs=[tmp_path])
    assert [e.path for e in found] == [good]
    assert loaded is not None and loaded.source == str(good)
    warned = [r.getMessage() for r in caplog.records]
    for p in (bad_model, bad_steps, huge, nested):  # one warning naming each unreadable file
        assert sum(p.name in m for m in warned) == 1, (p.name, warned)
    # the CLI lists the good file and exits 0
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "adasde", "coefficients", "list", "--dir", str(tmp_path),
                          "--family", "gmm"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert str(good) in res.stdout and "Traceback" not in res.stderr


def test_checkpoint_beside_output_is_not_a_lookup_warning(tmp_path, caplog):
    from adasde.distill.checkpoint import save_checkpoint
    from adasde.distill.engine import Adam

    save(make(), tmp_path / "out.safetensors")
    p = torch.zeros(3, 1, requires_grad=True)
    save_checkpoint(tmp_path / "out.safetensors.ckpt.safetensors", {"r": p}, Adam([p], 0.1), {"iteration": 1})
    with caplog.at_level(logging.WARNING, logger="adasde"):
        assert len(matching("gmm", dirs=[tmp_path], kind=None)) == 1
    assert not [r for r in caplog.records if "ckpt" in r.getMessage()]


# --------------------------------------------------------------------------------------- item 4: torn reads
def test_load_reads_header_and_tensors_from_one_file(tmp_path, monkeypatch):
    """A writer replaces the file right after the reader opened it: the reader must see one file, not a mix."""
    a, b = make(seed=1, rho=1.0), make(seed=2, rho=2.0)
    target = tmp_path / "x.safetensors"
    save(a, target)
    other = save(b, tmp_path / "other.safetensors")
    real_open = open
    swapped = []

    def racing_open(path, *args, **kw):
        f = real_open(path, *args, **kw)
        if not swapped and Path(path) == target:
            swapped.append(1)
            os.replace(other, target)  # the concurrent writer's os.replace lands now
        return f

    monkeypatch.setattr("builtins.open", racing_open)
    got = load(target)
    assert swapped
    monkeypatch.undo()
    want = a if got.rho == 1.0 else b
    assert torch.equal(got.r, want.r.float()), "settings of one file mixed with the tensors of another"


# --------------------------------------------------------------------------------- item 9: absurd values
@pytest.mark.parametrize("field,value", [("gamma", 1e6), ("a", 1e6), ("c", 50.0), ("gamma", 1.5)])
def test_absurd_finite_coefficients_are_refused(tmp_path, field, value):
    c = make()
    getattr(c, field)[1, 0] = value
    with pytest.raises(CoefficientFileError, match=field):
        save(c, tmp_path / "x.safetensors")
    # and a file carrying them (written without our validator) is refused on load
    good = make()
    tensors = {k: getattr(good, k).float() for k in cio.TABLES} | {"sigmas": good.sigmas.double()}
    tensors[field] = tensors[field].clone()
    tensors[field][1, 0] = value
    p = tmp_path / "y.safetensors"
    p.write_bytes(st_save(tensors, metadata={"adasde": json.dumps(cio.to_metadata(good))}))
    with pytest.raises(CoefficientFileError, match=field):
        load(p)


def test_special_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    for reader in (cio.read_header, load):
        with pytest.raises(CoefficientFileError, match="not a regular file"):
            reader(fifo)
        with pytest.raises(CoefficientFileError, match="not a regular file"):
            reader(tmp_path)


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = save(make(), tmp_path / "x.safetensors")
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644


# ------------------------------------------------------------------------------------------------- fuzz
def _mutate_header(data: bytes, rng: random.Random) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["adasde"])
    junk = [None, "x", -1, 0, 10**30, -(10**30), 1e308, [], {}, [1, 2], True, "NaN", float("inf"), [10**20, 5],
            {"family": 3}, ["a"], 2**63, -0.0]
    choice = rng.randrange(6)
    if choice == 0:  # a metadata field gets a junk value
        meta[rng.choice([*meta, "model", "steps", "nfe", "kind", "version", "K", "base"])] = rng.choice(junk)
    elif choice == 1 and isinstance(meta.get("model"), dict):  # a model field
        meta["model"][rng.choice(["family", "prediction", "sigma_min", "sigma_max", "name"])] = rng.choice(junk)
    elif choice == 2:  # a tensor entry field
        name = rng.choice([k for k in header if k != "__metadata__"])
        header[name][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(
            [*junk, "F16", "I64", "BOOL", [0, 10**12], [5, 3], [3, 1, 1], [100000, 100000]])
    elif choice == 3:  # drop an entry or the metadata
        header.pop(rng.choice(list(header)))
    elif choice == 4:  # the metadata is not JSON / not an object
        header["__metadata__"]["adasde"] = rng.choice(["{", "[]", "1", '"s"', "null", "{}" * 3])
    else:  # the metadata table itself is junk
        header["__metadata__"] = rng.choice(junk)
    if header.get("__metadata__") is not None and isinstance(header["__metadata__"], dict) \
            and choice not in (4, 5):
        header["__metadata__"]["adasde"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    if rng.random() < 0.5:  # keep or break the declared header length
        return struct.pack("<Q", len(raw)) + raw + data[8 + n:]
    return struct.pack("<Q", rng.choice([len(raw), n, 0, 1, 2**63, 2**64 - 1])) + raw + data[8 + n:]


def test_fuzz_coefficient_reader(tmp_path):
    """>= 1,000 seeded corruptions (truncation, bit flips, header mutations): only CoefficientFileError, one line."""
    base = save(make(steps=3), tmp_path / "base.safetensors").read_bytes()
    amed = make(steps=3, kind="amed")
    net = AMEDPredictor(0.01, 0.0, seed=0)  # a predictor file is read only if its weights rebuild the network
    amed.predictor, amed.predictor_config = dict(net.state_dict()), net.config()
    bases = [base, save(amed, tmp_path / "amed.safetensors").read_bytes()]
    rng = random.Random(1234)
    p = tmp_path / "f.safetensors"
    kinds = {"ok": 0, "error": 0}
    t0 = time.perf_counter()
    for i in range(1200):
        data = corrupt(rng.choice(bases), rng, i, _mutate_header,
                       lambda d: (8, struct.unpack("<Q", d[:8])[0]))  # case 3: bytes inside the JSON header
        p.write_bytes(data)
        for reader in (cio.read_header, load):
            try:
                out = reader(p)
                kinds["ok"] += 1
                if reader is cio.read_header:  # what lookup reads from an accepted header has its JSON type
                    e = CoefficientEntry(p, out[1], 0)
                    assert isinstance(e.family, str) and isinstance(e.prediction, str) and isinstance(e.kind, str)
                    assert all(v is None or type(v) is int for v in (e.steps, e.nfe))
            except CoefficientFileError as exc:
                kinds["error"] += 1
                msg = str(exc)
                assert "\n" not in msg and str(p) in msg, msg
            except Exception as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"case {i} op {i % 4}: {type(exc).__name__}: {exc}")
    assert kinds["error"] > 1000
    assert time.perf_counter() - t0 < 60


def test_coefficient_error_is_an_adasde_error():
    assert issubclass(CoefficientFileError, AdasdeError)
