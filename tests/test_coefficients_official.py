"""coefficients.official: importing official AdaSDE predictor pickles without executing them.

The test builds pickles shaped like the released ``network-snapshot-*.pkl`` files (docs/ALGORITHMS.md section 3.6): a
``torch_utils.persistence`` reconstruct call whose argument carries the class source and the ``nn.Module`` state with
the raw tables as ``nn.Parameter``s.  The throwaway modules exist in ``sys.modules`` only while pickling.
"""

from __future__ import annotations

import builtins
import math
import os
import pickle
import types
import warnings

import pytest
import torch
from adasde.coefficients import CoefficientFileError, import_official, load, save
from adasde.samplers import get_sigmas
from helpers.pickles import fake_modules

SRC = "import os\nos.system('touch SHOULD_NOT_EXIST')\nclass adasde_predictor: pass\n"
B = 2 * math.log(0.6 / 0.4)
# effective values of the released 00000 run (3 grid points, NFE 3), docs/ALGORITHMS.md section 3.6
EFF = {"r": [0.2265, 0.1606], "c": [0.9976, 0.9971], "a": [0.8039, 0.9909], "gamma": [0.01222, 0.00043]}


def _raw(scale_dir=0.05, scale_time=0.2, g_max=0.02, g_min=1e-4):
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    atanh2 = lambda v, s: 2 * math.atanh((v - 1) / s)  # noqa: E731
    return {
        "r_params": [[logit(v)] for v in EFF["r"]],
        "scale_dir_params": [[atanh2(v, scale_dir)] for v in EFF["c"]],
        "scale_time_params": [[atanh2(v, scale_time)] for v in EFF["a"]],
        "gamma_params": [[2 * logit((v - g_min) / (g_max - g_min)) - B] for v in EFF["gamma"]],
        "weight_s": [[0.3], [-1.0]],
    }



def build_pickle(path, attrs=None, protocol=4, evil=None, raw=None):
    """Write a persistence-style predictor pickle; ``evil`` is an object placed inside the predictor's state."""
    names = ["torch_utils", "torch_utils.persistence", "training", "training.networks", "training.loss"]
    with fake_modules(names) as mods:
        def _reconstruct_persistent_obj(meta):  # what the original loader would exec
            raise AssertionError("never called while pickling")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj

        class adasde_predictor(torch.nn.Module):  # noqa: N801 - name of the original class
            def __reduce__(self):
                state = dict(self.__dict__)
                meta = dict(type="class", version=6, module_src=SRC,
                            class_name="training.networks.adasde_predictor", state=state)
                return (_reconstruct_persistent_obj, (meta,))

        adasde_predictor.__module__ = "training.networks"
        adasde_predictor.__qualname__ = "adasde_predictor"
        mods["training.networks"].adasde_predictor = adasde_predictor

        class AdaSDE_loss:  # noqa: N801 - pickled by reference, not through persistence
            def __init__(self):
                self.num_steps, self.solver, self.M = 3, "adasde", 3

        AdaSDE_loss.__module__ = "training.loss"
        AdaSDE_loss.__qualname__ = "AdaSDE_loss"
        mods["training.loss"].AdaSDE_loss = AdaSDE_loss

        m = adasde_predictor()
        for k, v in (raw or _raw()).items():
            setattr(m, k, torch.nn.Parameter(torch.tensor(v, dtype=torch.float32)))
        defaults = dict(num_steps=3, num_points=1, scale_dir=0.05, scale_time=0.2, gamma=0.02, gamma_min=1e-4,
                        schedule_type="time_uniform", schedule_rho=1.0, afs=True, dataset_name="cifar10",
                        sigma_min=0.002, sigma_max=80.0, fcn=False)
        for k, v in {**defaults, **(attrs or {})}.items():
            if v is None:
                continue
            setattr(m, k, v)
        if evil is not None:
            m.hidden = evil
        with open(path, "wb") as f:
            pickle.dump(dict(model=m.eval().requires_grad_(False), loss_fn=AdaSDE_loss()), f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_decoded_values(tmp_path, protocol):
    c = import_official(build_pickle(tmp_path / "network-snapshot-010000.pkl", protocol=protocol))
    for k, vals in EFF.items():
        assert torch.allclose(getattr(c, k).flatten().double(), torch.tensor(vals, dtype=torch.float64),
                              atol=1e-6), k
    assert torch.allclose(c.w, torch.ones(2, 1))  # softmax over K = 1
    assert torch.allclose(c.sigmas, torch.tensor([80.0, 2.82369, 0.002], dtype=torch.float64), rtol=1e-5)
    assert torch.equal(c.sigmas, get_sigmas("time_uniform", 3, 0.002, 80.0, 1.0, dtype=torch.float64))
    assert (c.kind, c.afs, c.nfe, c.schedule, c.rho) == ("adasde", True, 3, "time_uniform", 1.0)
    assert c.model.family == "edm-cifar10" and c.model.prediction == "edm"
    assert c.training["kimg"] == 10000 and c.training["gamma_min"] == 1e-4
    assert c.training["class_name"] == "training.networks.adasde_predictor"
    assert not os.path.exists("SHOULD_NOT_EXIST")
    d = load(save(c, tmp_path / "cifar10_nfe3.safetensors"))  # exports to our format
    assert torch.equal(d.r, c.r) and d.model.family == "edm-cifar10"


def test_raw_mappings_and_defaults(tmp_path):
    raw = {"r_params": [[0.0, 1.0], [-2.0, 0.5]], "scale_dir_params": [[1.0, -1.0], [0.0, 3.0]],
           "scale_time_params": [[0.5, 0.5], [-0.5, 0.0]], "gamma_params": [[0.0, 1.0], [-1.0, 2.0]],
           "weight_s": [[0.0, 1.0], [2.0, -1.0]]}
    attrs = dict(num_points=2, gamma_min=None, scale_dir=0.1, gamma=0.01, fcn=True)
    c = import_official(build_pickle(tmp_path / "p.pkl", attrs=attrs, raw=raw))
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in raw.items()}
    assert torch.allclose(c.r.double(), torch.sigmoid(t["r_params"]), atol=1e-6)
    c_ref = 1 + 0.1 * torch.tanh(t["scale_dir_params"] / 2)
    c_ref[-1] = 1.0  # fcn: last step's direction scale forced to 1
    assert torch.allclose(c.c.double(), c_ref, atol=1e-6)
    assert torch.allclose(c.a.double(), 1 + 0.2 * torch.tanh(t["scale_time_params"] / 2), atol=1e-6)
    g_ref = 1e-4 + (0.01 - 1e-4) * torch.sigmoid((t["gamma_params"] + B) / 2)  # gamma_min absent -> 1e-4
    assert torch.allclose(c.gamma.double(), g_ref, atol=1e-8)
    assert torch.allclose(c.w.double(), torch.softmax(t["weight_s"], -1), atol=1e-6)
    assert c.K == 2 and c.nfe == 5


def test_disabled_flags(tmp_path):
    c = import_official(build_pickle(tmp_path / "p.pkl", attrs=dict(scale_dir=0, scale_time=0, gamma=0)))
    assert torch.equal(c.c, torch.ones(2, 1)) and torch.equal(c.a, torch.ones(2, 1))
    assert torch.equal(c.gamma, torch.zeros(2, 1))


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("evil_cls, called", [(_System, os.system.__module__ + ".system"), (_Exec, "builtins.exec")])
def test_malicious_pickle_refused(tmp_path, evil_cls, called):
    marker = tmp_path / "pwned"
    path = build_pickle(tmp_path / "evil.pkl", evil=evil_cls(marker))
    with pytest.raises(CoefficientFileError, match="refusing to load") as e:
        import_official(path)
    assert called in str(e.value) and str(path) in str(e.value)
    assert not marker.exists()
    top = tmp_path / "top.pkl"  # the payload alone, at the top level
    top.write_bytes(pickle.dumps(evil_cls(marker)))
    with pytest.raises(CoefficientFileError, match=f"pickle tries to call {called}"):
        import_official(top)
    assert not marker.exists()


def test_other_globals_refused(tmp_path):
    p = tmp_path / "sub.pkl"
    p.write_bytes(b"csubprocess\nPopen\n(S'true'\ntR.")
    with pytest.raises(CoefficientFileError, match="subprocess.Popen"):
        import_official(p)
    p.write_bytes(pickle.dumps(torch.nn.Linear(2, 2)))  # a real torch module class is not on the whitelist
    with pytest.raises(CoefficientFileError, match="torch.nn.modules.linear.Linear"):
        import_official(p)


def test_broken_inputs(tmp_path):
    with pytest.raises(CoefficientFileError, match="no such file"):
        import_official(tmp_path / "missing.pkl")
    p = tmp_path / "trunc.pkl"
    good = build_pickle(tmp_path / "g.pkl").read_bytes()
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(CoefficientFileError, match="not a readable pickle"):
        import_official(p)
    p.write_bytes(pickle.dumps({"model": {"foo": 1}}))
    with pytest.raises(CoefficientFileError, match="no predictor state"):
        import_official(p)
    bad = build_pickle(tmp_path / "b.pkl", attrs=dict(num_steps=5))
    with pytest.raises(CoefficientFileError, match="num_steps=5 but the tables have 2 rows"):
        import_official(bad)


def test_safe_unpickler_rebuilds_tensors_without_torch_load():
    import io

    from adasde.coefficients.official import SafeUnpickler

    t = torch.arange(6, dtype=torch.float64).reshape(2, 3)[:, 1:]  # a strided view with a storage offset
    with warnings.catch_warnings():  # TypedStorage deprecation notice (warned once per process)
        warnings.simplefilter("ignore")
        typed = t.storage()  # a typed storage, as older torch versions pickled them
    for obj, ref in ((t, t), (typed, torch.arange(6.0, dtype=torch.float64)),
                     (torch.nn.Parameter(torch.tensor([1.5, -2.0])), torch.tensor([1.5, -2.0]))):
        for protocol in (2, 4):
            out = SafeUnpickler(io.BytesIO(pickle.dumps(obj, protocol=protocol))).load()
            vals = torch.tensor(out.tolist(), dtype=ref.dtype)
            assert torch.equal(vals, ref)


def test_cli_import_list_show(tmp_path, capsys, monkeypatch):
    import argparse

    from adasde.coefficients import cli

    parser = argparse.ArgumentParser(prog="adasde")  # only our sub-command: `adasde` itself imports every subsystem
    cli.register(parser.add_subparsers())

    def main(argv):
        args = parser.parse_args(argv)
        return args.func(args)

    monkeypatch.delenv("ADASDE_COEFFICIENTS", raising=False)
    pkl = build_pickle(tmp_path / "network-snapshot-010000.pkl")
    out = tmp_path / "lib" / "cifar10_nfe3.safetensors"
    assert main(["coefficients", "import-official", str(pkl), str(out)]) == 0
    assert "NFE 3" in capsys.readouterr().out and load(out).model.family == "edm-cifar10"
    assert main(["coefficients", "list", "--dir", str(tmp_path / "lib"), "--family", "cifar10"]) == 0
    assert str(out) in capsys.readouterr().out
    assert main(["coefficients", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0.2265" in text and "80" in text
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_System(tmp_path / "pwned")))
    assert main(["coefficients", "import-official", str(evil)]) == 2
    assert "refusing to load" in capsys.readouterr().err and not (tmp_path / "pwned").exists()


def test_numpy_and_device_allowed_but_object_arrays_still_checked(tmp_path):
    import io

    import numpy as np
    from adasde.coefficients.official import SafeUnpickler

    data = {"arr": np.arange(3.0), "s": np.float32(2.5), "dev": torch.device("cpu")}
    out = SafeUnpickler(io.BytesIO(pickle.dumps(data))).load()
    assert out["arr"].tolist() == [0.0, 1.0, 2.0] and out["s"] == 2.5 and out["dev"] == torch.device("cpu")
    marker = tmp_path / "pwned"
    p = tmp_path / "obj.pkl"
    p.write_bytes(pickle.dumps(np.array([_System(marker)], dtype=object)))
    with pytest.raises(CoefficientFileError, match="pickle tries to call"):
        import_official(p)
    assert not marker.exists()


# Globals referenced by every released network-snapshot-000010.pkl (read with pickletools from all 8 files).
RELEASE_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "_load_from_bytes"), ("collections", "OrderedDict"),
    ("torch.nn.modules.activation", "Sigmoid"), ("torch.nn.modules.activation", "Softmax"),
    ("solvers", "adasde_sampler"), ("solvers", "dpm_sampler"),
}


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """(module, name) of every STACK_GLOBAL / GLOBAL in a pickle, read with pickletools (nothing is loaded)."""
    import pickletools

    memo, stack, out = {}, [], set()
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            stack.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo.get(arg))
        elif op.name == "MEMOIZE" and stack:
            memo[len(memo)] = stack[-1]
        elif op.name == "MEMOIZE":
            memo[len(memo)] = None
        elif op.name == "STACK_GLOBAL":
            out.add((stack[-2], stack[-1]))
        elif op.name == "GLOBAL":
            out.add(tuple(arg.split(" ", 1)))
        if op.name not in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINGET", "LONG_BINGET", "GET",
                           "MEMOIZE"):
            stack.append(None)
    return out


def build_release_pickle(path, nfe=3, modules=None, evil=None):
    """A predictor pickle with the structure of the released files: ``dict(model=..., loss_fn=...)``, both EDM
    persistence objects (``class_name`` without module, ``version`` 6, embedded source, ``state`` = the object's
    ``__dict__``); the predictor is an ``nn.Module`` whose ``_modules`` hold ``nn.Sigmoid`` and ``nn.Softmax(dim=-1)``
    (or ``modules``) and whose ``_parameters`` hold the raw tables; the loss object references the solver functions
    of the ``solvers`` module and holds the teacher grid as a tensor."""
    names = ["torch_utils", "torch_utils.persistence", "solvers"]
    with fake_modules(names) as mods:
        def _reconstruct_persistent_obj(meta):
            raise AssertionError("never called while pickling")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
        for fn in ("adasde_sampler", "dpm_sampler"):
            f = types.FunctionType((lambda: None).__code__, {}, fn)
            f.__module__, f.__qualname__ = "solvers", fn
            setattr(mods["solvers"], fn, f)

        def persistent(obj, class_name):
            meta = dict(type="class", version=6, module_src=SRC, class_name=class_name, state=dict(obj.__dict__))
            return (_reconstruct_persistent_obj, (meta,))

        class adasde_predictor(torch.nn.Module):  # noqa: N801 - name of the original class
            def __reduce__(self):
                return persistent(self, "adasde_predictor")

        class adasde_loss:  # noqa: N801 - name of the original class
            def __reduce__(self):
                return persistent(self, "adasde_loss")

        steps = (nfe + 1) // 2
        kw = dict(num_steps=steps + 1, sampler_stu="adasde", sampler_tea="dpm", M=3, guidance_type=None,
                  guidance_rate=0.0, schedule_type="time_uniform", schedule_rho=1.0, afs=True,
                  dataset_name="cifar10", scale_dir=0.05, scale_time=0.2, gamma=0.02, max_order=3, predict_x0=True,
                  lower_order_final=True, num_points=1, fcn=False, alpha=20.0)
        m = adasde_predictor()
        raw = _raw()
        for k, v in raw.items():
            rows = [v[i % len(v)] for i in range(steps)]
            m.register_parameter(k, torch.nn.Parameter(torch.tensor(rows, dtype=torch.float32)))
        for name, mod in (modules or {"sigmoid": torch.nn.Sigmoid(), "softmax": torch.nn.Softmax(dim=-1)}).items():
            m.add_module(name, mod)
        m.eval().requires_grad_(False)
        if evil is not None:  # a callable that plants a payload after eval() walked the modules
            evil(m)
        for k, v in kw.items():
            setattr(m, k, v)
        m.gamma_min, m._init_args, m._init_kwargs = 1e-4, (), dict(kw, img_resolution=32)
        loss = adasde_loss()
        loss.__dict__.update(num_steps=steps + 1, solver_stu=mods["solvers"].adasde_sampler,
                             solver_tea=mods["solvers"].dpm_sampler, M=3, sigma_min=0.002, sigma_max=80.0,
                             num_steps_teacher=9, tea_slice=[4, 8], t_steps=torch.linspace(80.0, 0.002, steps + 1),
                             buffer_model=[], buffer_t=[], lpips=None, _init_args=(), _init_kwargs={})
        with open(path, "wb") as f:
            pickle.dump(dict(model=m, loss_fn=loss), f, protocol=4)
    return path


@pytest.mark.parametrize("nfe", [3, 5, 7, 9])
def test_release_structure_converts(tmp_path, nfe):
    path = build_release_pickle(tmp_path / "network-snapshot-000010.pkl", nfe=nfe)
    assert pickle_globals(path.read_bytes()) == RELEASE_GLOBALS  # the same classes as the released files
    c = import_official(path)
    assert c.nfe == nfe and c.training["class_name"] == "adasde_predictor" and c.training["kimg"] == 10
    if nfe == 3:  # the first released run's values
        for k, vals in EFF.items():
            assert torch.allclose(getattr(c, k).flatten().double(), torch.tensor(vals, dtype=torch.float64),
                                  atol=1e-6), k
    assert torch.equal(c.sigmas, get_sigmas("time_uniform", c.r.shape[0] + 1, 0.002, 80.0, 1.0,
                                            dtype=torch.float64))
    assert not os.path.exists("SHOULD_NOT_EXIST")


def test_release_structure_modules_stay_inert(tmp_path):
    from adasde.coefficients.official import Stub, safe_load_pickle

    seq = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.ModuleList([torch.nn.SiLU()]))
    path = build_release_pickle(tmp_path / "p.pkl", modules={"sigmoid": torch.nn.Sigmoid(),
                                                             "softmax": torch.nn.Softmax(dim=-1), "head": seq})
    data = safe_load_pickle(path)
    mods = data["model"].state["_modules"]
    assert all(isinstance(v, Stub) and not isinstance(v, torch.nn.Module) for v in mods.values())
    assert mods["softmax"].state["dim"] == -1 and isinstance(mods["head"].state["_modules"]["1"], Stub)
    assert import_official(path).nfe == 3


@pytest.mark.parametrize("evil_cls, called", [(_System, os.system.__module__ + ".system"), (_Exec, "builtins.exec")])
def test_release_structure_malicious_refused(tmp_path, evil_cls, called):
    marker = tmp_path / "pwned"
    path = build_release_pickle(tmp_path / "evil.pkl", modules={"head": torch.nn.Sequential(torch.nn.Sigmoid())},
                                evil=lambda m: m.head._modules.__setitem__("1", evil_cls(marker)))  # in a container
    with pytest.raises(CoefficientFileError, match=f"pickle tries to call {called}"):
        import_official(path)
    assert not marker.exists()
    path = build_release_pickle(tmp_path / "lin.pkl", modules={"sigmoid": torch.nn.Sigmoid(),
                                                               "proj": torch.nn.Linear(2, 2)})
    with pytest.raises(CoefficientFileError, match="torch.nn.modules.linear.Linear"):
        import_official(path)
