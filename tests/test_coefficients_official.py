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


# The eight released runs (exps/0000N-cifar10-<N>-<NFE>-adasde-dpm-<M>-uni1.0-afs[-ablation]): the attributes that
# differ between the files and the effective values decoded from them (docs/ALGORITHMS.md section 3.6).  Every file
# has the same classes and layout; they differ in the table length N - 1 (2..5 rows, so the tensor bytes change from
# SHORT_BINBYTES to BINBYTES), M, gamma (0 in the ablation runs), gamma_min, scale_dir and (00002) alpha.
RELEASE_RUNS = {
    "00000": dict(N=3, M=3, scale_dir=0.05, gamma=0.02, gamma_min=1e-4, r=[0.2265, 0.1606], c=[0.9976, 0.9971],
                  a=[0.8039, 0.9909], g=[0.01222, 0.0004345]),
    "00001": dict(N=3, M=3, scale_dir=0.05, gamma=0.0, gamma_min=1e-4, r=[0.2169, 0.172], c=[0.9973, 0.9971],
                  a=[0.8136, 0.9869]),
    "00002": dict(N=4, M=3, scale_dir=0.05, gamma=0.01, gamma_min=1e-4, alpha=50.0, r=[0.2109, 0.5184, 0.1603],
                  c=[0.9889, 1.024, 1.0045], a=[0.8047, 1.1211, 0.9154], g=[0.00010001, 0.00017, 0.00027]),
    "00003": dict(N=4, M=3, scale_dir=0.05, gamma=0.0, gamma_min=1e-4, r=[0.2181, 0.4547, 0.1557],
                  c=[0.9981, 1.0072, 1.0031], a=[0.8035, 1.0068, 0.906]),
    "00004": dict(N=5, M=3, scale_dir=0.1, gamma=0.01, gamma_min=1e-4, r=[0.1842, 0.4072, 0.5663, 0.1457],
                  c=[0.9991, 0.9975, 1.0139, 1.0151], a=[0.8074, 0.9538, 1.0214, 0.8849],
                  g=[0.00010001, 0.00017, 0.00021, 0.00031]),
    "00005": dict(N=5, M=3, scale_dir=0.1, gamma=0.0, gamma_min=2e-4, r=[0.1381, 0.4074, 0.6188, 0.1424],
                  c=[1.0003, 0.9997, 1.0225, 1.0155], a=[0.805, 0.9599, 1.0113, 0.8503]),
    "00006": dict(N=6, M=2, scale_dir=0.1, gamma=0.01, gamma_min=2e-4, r=[0.1197, 0.4839, 0.5234, 0.5119, 0.166],
                  c=[0.9991, 0.9996, 1.001, 1.0304, 1.0225], a=[0.8028, 1.002, 1.0134, 0.9758, 0.8557],
                  g=[0.00020001, 0.00029, 0.00022, 0.00028, 0.00038]),
    "00007": dict(N=6, M=2, scale_dir=0.1, gamma=0.0, gamma_min=2e-4, r=[0.1505, 0.4573, 0.5268, 0.5253, 0.1693],
                  c=[0.9986, 0.9965, 0.9953, 1.0302, 1.0204], a=[0.8025, 1.0063, 1.0086, 1.0044, 0.8723]),
}
# what the released predictors and loss objects hold besides the nn.Module bookkeeping (read with the safe loader)
RELEASE_PREDICTOR_ATTRS = ["training", "dataset_name", "img_resolution", "num_steps", "sampler_stu", "sampler_tea", "M",
                           "guidance_type", "guidance_rate", "schedule_type", "schedule_rho", "afs", "scale_dir",
                           "scale_time", "gamma", "max_order", "predict_x0", "lower_order_final", "num_points", "fcn",
                           "alpha", "gamma_min"]
RELEASE_PARAMETERS = ["r_params", "scale_dir_params", "scale_time_params", "weight_s", "gamma_params"]
RELEASE_LOSS_ATTRS = ["num_steps", "solver_stu", "solver_tea", "M", "schedule_type", "schedule_rho", "afs",
                      "max_order", "sigma_min", "sigma_max", "predict_x0", "lower_order_final", "num_steps_teacher",
                      "tea_slice", "t_steps", "buffer_model", "buffer_t", "lpips"]


def _release_raw(run: dict) -> dict[str, list[list[float]]]:
    """Raw tables whose section 3.1 mappings give the run's effective values (arbitrary raw gamma when gamma is off,
    as the ablation files carry untrained ones)."""
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    steps = run["N"] - 1
    g = run.get("g") or [0.0] * steps
    return {
        "r_params": [[logit(v)] for v in run["r"]],
        "scale_dir_params": [[2 * math.atanh((v - 1) / run["scale_dir"])] for v in run["c"]],
        "scale_time_params": [[2 * math.atanh((v - 1) / 0.2)] for v in run["a"]],
        "weight_s": [[0.5 * i - 1.0] for i in range(steps)],
        "gamma_params": ([[2 * logit((v - run["gamma_min"]) / (run["gamma"] - run["gamma_min"])) - B] for v in g]
                         if run["gamma"] else [[0.3 * i - 0.5] for i in range(steps)]),
    }


def release_src(class_name: str) -> str:
    """Embedded module source of a persistence object (each released class carries its own file, > 255 chars)."""
    return SRC + f"class {class_name}: pass\n" + "# a module long enough to be pickled as BINUNICODE\n" * 6


def build_release_pickle(path, run="00000", modules=None, evil=None, loss_sigmas=(0.002, 80.0),
                         dataset="cifar10"):
    """A predictor pickle with the structure of the released files (what the release's training loop writes:
    ``pickle.dump(dict(model=predictor, loss_fn=loss_fn))`` after ``.eval().requires_grad_(False).cpu()``): both
    values are EDM persistence objects (``class_name`` without module, ``version`` 6, embedded source, ``state`` = the
    object's ``__dict__``); the predictor is an ``nn.Module`` whose ``_parameters`` hold the raw tables and whose
    ``_modules`` hold ``nn.Sigmoid`` and ``nn.Softmax(dim=-1)`` (or ``modules``), its attributes in the released
    order; the loss object references the solver functions of the ``solvers`` module, holds the sigma range and the
    student grid as a tensor.  ``run`` names one of :data:`RELEASE_RUNS` (or is such a dict)."""
    run = RELEASE_RUNS[run] if isinstance(run, str) else run
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
            meta = dict(type="class", version=6, module_src=release_src(class_name), class_name=class_name,
                        state=dict(obj.__dict__))
            return (_reconstruct_persistent_obj, (meta,))

        class adasde_predictor(torch.nn.Module):  # noqa: N801 - name of the original class
            def __reduce__(self):
                return persistent(self, "adasde_predictor")

        class adasde_loss:  # noqa: N801 - name of the original class
            def __reduce__(self):
                return persistent(self, "adasde_loss")

        n, m_order, smin, smax = run["N"], run["M"], *loss_sigmas
        kw = dict(num_steps=n, sampler_stu="adasde", sampler_tea="dpm", M=m_order, guidance_type=None,
                  guidance_rate=0.0, schedule_rho=1.0, schedule_type="time_uniform", afs=True, dataset_name=dataset,
                  scale_dir=run["scale_dir"], scale_time=0.2, gamma=run["gamma"], num_points=1, fcn=False,
                  alpha=run.get("alpha", 20.0), max_order=3, predict_x0=True, lower_order_final=True, img_resolution=32)
        m = adasde_predictor()
        for k, v in _release_raw(run).items():
            m.register_parameter(k, torch.nn.Parameter(torch.tensor(v, dtype=torch.float32)))
        for name, mod in (modules or {"sigmoid": torch.nn.Sigmoid(), "softmax": torch.nn.Softmax(dim=-1)}).items():
            m.add_module(name, mod)
        m.eval().requires_grad_(False)
        if evil is not None:  # a callable that plants a payload after eval() walked the modules
            evil(m)
        for k in RELEASE_PREDICTOR_ATTRS[1:-1]:
            setattr(m, k, kw[k])
        m.gamma_min, m._init_args, m._init_kwargs = run["gamma_min"], (), kw
        teacher = 1 + (n - 1) * (m_order + 1)  # AFS teacher grid: M intermediate points per student step
        loss_kw = dict(num_steps=n, sampler_stu="adasde", sampler_tea="dpm", M=m_order, schedule_type="time_uniform",
                       schedule_rho=1.0, afs=True, max_order=3, sigma_min=smin, sigma_max=smax, predict_x0=True,
                       lower_order_final=True)
        numeric = all(isinstance(v, float) for v in loss_sigmas)
        grid = get_sigmas("time_uniform", n, smin, smax, 1.0).float() if numeric else torch.zeros(n)
        loss = adasde_loss()
        loss.__dict__.update({k: v for k, v in loss_kw.items() if not k.startswith("sampler")})
        loss.__dict__.update(solver_stu=mods["solvers"].adasde_sampler, solver_tea=mods["solvers"].dpm_sampler)
        loss.__dict__ = {k: loss.__dict__[k] for k in RELEASE_LOSS_ATTRS[:12]}  # the released order
        loss.__dict__.update(num_steps_teacher=teacher, tea_slice=list(range(m_order + 1, teacher, m_order + 1)),
                             t_steps=grid, buffer_model=[],
                             buffer_t=[], lpips=None, _init_args=(), _init_kwargs=loss_kw)
        with open(path, "wb") as f:
            pickle.dump(dict(model=m, loss_fn=loss), f)
    return path


@pytest.mark.parametrize("run", sorted(RELEASE_RUNS))
def test_release_structure_converts(tmp_path, monkeypatch, run):
    from adasde.coefficients.official import safe_load_pickle

    monkeypatch.chdir(tmp_path)  # the embedded source would create SHOULD_NOT_EXIST here
    info = RELEASE_RUNS[run]
    path = build_release_pickle(tmp_path / "network-snapshot-000010.pkl", run=run)
    assert pickle_globals(path.read_bytes()) == RELEASE_GLOBALS  # the same classes as the released files
    data = safe_load_pickle(path)
    pred, loss = data["model"].state, data["loss_fn"].state
    assert [k for k in pred if not k.startswith("_")] == RELEASE_PREDICTOR_ATTRS
    assert list(pred["_parameters"]) == RELEASE_PARAMETERS and list(pred["_modules"]) == ["sigmoid", "softmax"]
    assert [k for k in loss if not k.startswith("_")] == RELEASE_LOSS_ATTRS

    c = import_official(path)
    steps = info["N"] - 1
    assert (c.nfe, c.r.shape, c.K) == (2 * steps - 1, (steps, 1), 1)
    assert c.training["class_name"] == "adasde_predictor" and c.training["kimg"] == 10
    assert c.training["gamma_min"] == info["gamma_min"] and c.training["scale_dir"] == info["scale_dir"]
    for k in ("r", "c", "a"):
        assert torch.allclose(getattr(c, k).flatten().double(), torch.tensor(info[k], dtype=torch.float64),
                              atol=1e-6), k
    gamma = torch.tensor(info.get("g") or [0.0] * steps, dtype=torch.float64)
    assert torch.allclose(c.gamma.flatten().double(), gamma, rtol=1e-4, atol=1e-9)
    assert torch.equal(c.w, torch.ones(steps, 1))
    assert torch.equal(c.sigmas, get_sigmas("time_uniform", info["N"], 0.002, 80.0, 1.0, dtype=torch.float64))
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()


def test_release_structure_sigma_range_from_loss_object(tmp_path):
    """The released predictors carry no sigma range; the loss object holds the teacher's (set by the training loop),
    so a run on another model keeps its own grid end points."""
    path = build_release_pickle(tmp_path / "p.pkl", run="00002", loss_sigmas=(0.0292, 14.6146), dataset="ms_coco")
    c = import_official(path)
    assert (c.model.sigma_min, c.model.sigma_max, c.model.family) == (0.0292, 14.6146, "sd15")
    assert torch.equal(c.sigmas, get_sigmas("time_uniform", 4, 0.0292, 14.6146, 1.0, dtype=torch.float64))
    bad = build_release_pickle(tmp_path / "bad.pkl", loss_sigmas=("tiny", 80.0))
    with pytest.raises(CoefficientFileError, match=r"attribute sigma_min is str 'tiny', not a finite number") as e:
        import_official(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_release_structure_modules_stay_inert(tmp_path):
    from adasde.coefficients.official import Stub, safe_load_pickle

    seq = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.ModuleList([torch.nn.SiLU()]))
    path = build_release_pickle(tmp_path / "p.pkl", modules={"sigmoid": torch.nn.Sigmoid(),
                                                             "softmax": torch.nn.Softmax(dim=-1), "head": seq})
    data = safe_load_pickle(path)
    mods = data["model"].state["_modules"]
    assert all(isinstance(v, Stub) and not isinstance(v, torch.nn.Module) for v in mods.values())
    assert mods["softmax"].state["dim"] == -1 and isinstance(mods["head"].state["_modules"]["1"], Stub)
    assert data["model"].source == release_src("adasde_predictor")  # kept as text, never run
    assert data["loss_fn"].source == release_src("adasde_loss")
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
    with pytest.raises(CoefficientFileError, match="torch.nn.modules.linear.Linear") as e:
        import_official(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value) and "Fix:" in str(e.value)
