"""The ComfyUI pack's root stays light: importing ``adasde`` outside ComfyUI imports no host module, and the V3 entry
point / web directory are where ComfyUI looks for them (no ComfyUI needed for this file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_root_import_pulls_no_host_module() -> None:
    code = (
        "import sys, inspect, adasde\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('comfy', 'comfy_api', 'folder_paths', 'server', 'nodes', 'modules', 'comfy_execution') "
        "or m.startswith('adasde.nodes'))\n"
        "assert not bad, bad\n"
        "assert inspect.iscoroutinefunction(adasde.comfy_entrypoint)\n"
        "assert adasde.WEB_DIRECTORY == './web'\n"
        "assert not hasattr(adasde, 'NODE_CLASS_MAPPINGS')  # V1 mappings would shadow the V3 entry point\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_web_extension_file_is_served_from_web_directory() -> None:
    js = (REPO / "web" / "adasde.js").read_text()
    assert 'from "../../scripts/app.js"' in js and "app.registerExtension" in js
    assert '"adasde.distill.progress"' in js and "window.__adasdeRegistered" in js
