"""Registry readiness: ``pyproject.toml`` parsed by ComfyUI's own registry parser (``comfy_config``), the
``requirements.txt`` ComfyUI-Manager installs, the WebUI ``metadata.ini`` as A1111 reads it, and the release
checklist."""

from __future__ import annotations

import configparser
import os
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("ADASDE_COMFYUI_DIR") or REPO / ".cache" / "comfyui")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_tool_comfy_is_complete() -> None:
    comfy = _pyproject()["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "includes", "web"):
        assert comfy.get(key), key
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("docs/img/icon.svg")
    assert (REPO / "docs" / "img" / "icon.svg").is_file()
    assert (REPO / comfy["web"] / "adasde.js").is_file()
    for path in comfy["includes"]:
        assert (REPO / path).exists() and any((REPO / path).iterdir()), path
    name = _pyproject()["project"]["name"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,98}", name) and "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", _pyproject()["project"]["version"])
    assert _pyproject()["project"]["urls"]["Repository"].startswith("https://")


def test_comfyui_registry_parser_reads_it() -> None:
    if not (COMFY / "comfy_config" / "config_parser.py").is_file():
        pytest.skip(f"ComfyUI not found at {COMFY}")
    sys.path.insert(0, str(COMFY))
    try:
        from comfy_config.config_parser import extract_node_configuration
    except ImportError as exc:  # pydantic-settings missing in this environment
        pytest.skip(f"comfy_config not importable: {exc}")
    finally:
        sys.path.remove(str(COMFY))
    cfg = extract_node_configuration(REPO)
    assert cfg is not None
    assert cfg.tool_comfy.publisher_id == "adasde" and cfg.tool_comfy.web == "web"
    assert cfg.tool_comfy.icon.endswith("icon.svg") and "coefficients/data" in cfg.tool_comfy.includes
    assert cfg.project.name == "adasde" and cfg.project.urls.repository.startswith("https://")
    assert cfg.project.supported_comfyui_version.startswith(">=")
    assert "NVIDIA CUDA" in " ".join(cfg.project.supported_accelerators) or cfg.project.supported_accelerators


def test_requirements_txt_has_runtime_deps_but_no_torch() -> None:
    lines = [ln.split("#")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    names = {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower() for r in reqs}
    assert not names & {"torch", "torchvision", "torchaudio"}  # the host owns torch
    deps = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in _pyproject()["project"]["dependencies"]}
    assert names == deps - {"torch"}, (names, deps)


def test_metadata_ini_as_the_webui_reads_it() -> None:
    cfg = configparser.ConfigParser()
    assert cfg.read(REPO / "metadata.ini")
    assert cfg.get("Extension", "Name").strip().lower() == "adasde"
    assert cfg.get("Extension", "Requires", fallback="").strip() == ""


def test_release_checklist_covers_every_channel() -> None:
    text = (REPO / "docs/RELEASE.md").read_text()
    for needle in ("pyproject.toml", "_version.py", "requirements.txt", "metadata.ini", "comfy node publish",
                   "PublisherId", "Repository", "index.json", "tests", "bench/results"):
        assert needle in text, needle
