"""Shared pytest settings and fixtures: offline hubs, one CPU thread per process (tests start servers and torchrun
children that share the cores; oversubscribed OpenMP threads are far slower than one thread each), a fixed torch
seed; the session-wide ComfyUI server (``comfy``) and headless browser on it (``browser``), the reduced demo run
(``reduced_demo``) and the tiny diffusers folders of ``tests/helpers`` (``ddpm_dir``, ``sd_dir``, ``sd3_dir``,
``flux_dir``; their helper modules import diffusers, so they load on first use).  Plain helpers live in
``tests/helpers``; no test module imports another."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.chromium import CDP, devtools  # noqa: E402
from helpers.comfyui import Server, require_comfyui  # noqa: E402
from helpers.demo import DemoRun, run_reduced_demo  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real ComfyUI server (tests/helpers/comfyui.py), one subprocess per session."""
    require_comfyui()
    srv = Server(tmp_path_factory.mktemp("comfyui"))
    try:
        srv.start()
    except Exception:
        srv.stop()
        raise
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def browser(comfy: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CDP]:
    """One headless Chromium page for the ComfyUI frontend."""
    with devtools(tmp_path_factory.mktemp("chromium"), "--window-size=1400,1100") as cdp:
        yield cdp


@pytest.fixture(scope="session")
def reduced_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The reduced ``adasde demo`` run (tests/helpers/demo.py), once per session; fails when the run failed."""
    run = run_reduced_demo(tmp_path_factory.mktemp("demo"))
    assert run.rc == 0, f"adasde demo failed (rc {run.rc}):\n{run.stdout}\n{run.stderr}"
    return run


# ------------------------------------------------------------------------ tiny diffusers folders (tests/helpers)
def _folder_fixture(module: str, make: str, name: str):
    """A session fixture ``NAME_dir``: the folder ``module.make(path)`` writes, built once per session."""

    @pytest.fixture(scope="session", name=f"{name}_dir")
    def _folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
        import importlib

        return getattr(importlib.import_module(module), make)(tmp_path_factory.mktemp(name) / "pipe")

    return _folder


ddpm_dir = _folder_fixture("helpers.diffusers_models", "make_ddpm_folder", "ddpm")
sd_dir = _folder_fixture("helpers.diffusers_models", "make_sd_folder", "sd")
sd3_dir = _folder_fixture("helpers.flow_models", "make_sd3_folder", "sd3")
flux_dir = _folder_fixture("helpers.flow_models", "make_flux_folder", "flux")
