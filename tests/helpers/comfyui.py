"""Driving the real ComfyUI server from tests (docs/HOSTS.md sections B8 and B10): one subprocess per session, HTTP
for prompts and results, a websocket listener for the ``adasde.warning`` toasts, the server log for the plans our
samplers ran (``nodes/host.PLAN_LOG``), and graph builders for the tiny SD1.5-shaped model of
``tests/comfy_test_pack``.  Used by ``tests/test_comfyui_*.py`` and by cross-door tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from .chromium import free_port

REPO = Path(__file__).resolve().parents[2]
COMFY = Path(os.environ.get("ADASDE_COMFYUI_DIR") or REPO / ".cache" / "comfyui")
TEST_PACK = REPO / "tests" / "comfy_test_pack"
SIZE = 32  # image size -> 4 x 4 latents: the toy UNet runs in milliseconds
PLAN_LOG = "AdaSDE plan: "  # nodes/host.PLAN_LOG (nodes/ imports ComfyUI, so it is not importable here)

def require_comfyui() -> None:
    if (COMFY / "main.py").is_file():
        return
    msg = (f"real ComfyUI not found at {COMFY} (set ADASDE_COMFYUI_DIR or run tools/install_comfyui.sh)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI: " + msg)
    pytest.skip(msg)


def import_comfy_in_process() -> None:
    """Make the real ComfyUI importable in this process, on the CPU (skips, or fails in CI, when it is missing)."""
    require_comfyui()
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported (docs/HOSTS.md section A10)


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.coeff_dir = root / "user_coefficients"
        self.output_dir = root / "base" / "output"
        self.log_path = root / "server.log"
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.toasts: list[str] = []  # adasde.warning messages received over the websocket
        self._ws: Any = None

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        nodes = self.root / "custom_nodes"
        nodes.mkdir(parents=True)
        (self.root / "base" / "custom_nodes").mkdir(parents=True)
        self.coeff_dir.mkdir()
        os.symlink(REPO, nodes / "adasde")
        os.symlink(TEST_PACK, nodes / "adasde_test_pack")
        yaml = self.root / "extra_model_paths.yaml"
        yaml.write_text(f"adasde_tests:\n  base_path: {self.root}\n  custom_nodes: custom_nodes\n"
                        f"  adasde_coefficients: {self.coeff_dir.name}\n")
        # one thread: on a shared, overloaded CPU two OpenMP threads made a toy UNet call 200x slower (25 s vs 0.1 s)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.root / "base"), "--extra-model-paths-config", str(yaml),
               "--disable-auto-launch", "--database-url", "sqlite:///:memory:", "--preview-method", "none"]
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=COMFY, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                self.get("/object_info/AdaSDESampler")
                self._listen()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not come up in 180 s:\n{self.tail()}")

    def _listen(self) -> None:
        """Collect ``adasde.warning`` events (the frontend's toasts) on a websocket, if websocket-client exists."""
        try:
            import websocket
        except ImportError:
            return
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=None)
        self._ws = ws

        def run() -> None:
            while True:
                try:
                    msg = ws.recv()
                except Exception:  # noqa: BLE001 - closed at stop()
                    return
                if isinstance(msg, str) and msg.startswith("{"):
                    ev = json.loads(msg)
                    if ev.get("type") == "adasde.warning":
                        self.toasts.append(ev["data"]["message"])

        threading.Thread(target=run, daemon=True).start()

    def mark(self) -> tuple[int, int]:
        """A position in the server log and the toast list; :meth:`plans_since` / :meth:`toasts_since` read after it."""
        try:
            size = self.log_path.stat().st_size
        except OSError:
            size = 0
        return size, len(self.toasts)

    def log_since(self, mark: tuple[int, int]) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            f.seek(mark[0])
            return f.read().decode(errors="replace")

    def plans_since(self, mark: tuple[int, int]) -> list[dict]:
        """The ``Plan.protocol()`` records our samplers logged after ``mark``, in order."""
        out = []
        for line in self.log_since(mark).splitlines():
            if PLAN_LOG in line:
                out.append(json.loads(line.split(PLAN_LOG, 1)[1]))
        return out

    def toasts_since(self, mark: tuple[int, int], wait: float = 2.0) -> list[str] | None:
        """Toast texts received after ``mark`` (None without websocket-client)."""
        if self._ws is None:
            return None
        time.sleep(wait)  # events are sent before /history shows the prompt done; allow the socket to deliver them
        return list(self.toasts[mark[1]:])

    def stop(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -------------------------------------------------------------------------------------------- HTTP
    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}") from e
        return json.loads(raw) if raw.strip() else None

    def queue(self, prompt: dict) -> str:
        res = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        assert not res.get("node_errors"), res
        return res["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                entry = h[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.tail()}")

    def error(self, prompt: dict, timeout: float = 120) -> dict:
        """Run a prompt that must fail; returns the ``execution_error`` message data."""
        entry = self.wait(self.queue(prompt), timeout)
        assert entry["status"]["status_str"] == "error", entry["status"]
        errs = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert errs, entry["status"]
        return errs[0]

    def run(self, prompt: dict, timeout: float = 120) -> dict:
        entry = self.wait(self.queue(prompt), timeout)
        assert entry["status"]["status_str"] == "success", (json.dumps(entry["status"], indent=1)[-3000:],
                                                           self.tail())
        return entry

    def object_info(self, node: str) -> dict:
        return self.get(f"/object_info/{node}")[node]


# ------------------------------------------------------------------------------------------------ graph helpers
def toy(seed: int = 0) -> dict:
    return {"class_type": "AdaSDETestToyModel", "inputs": {"seed": seed}}


def stats_of(entry: dict, node: str = "stats") -> list[dict]:
    return entry["outputs"][node]["adasde_stats"][0]["images"]


def ksampler_graph(batch: int, seed: int, sampler: str = "adasde", scheduler: str = "adasde", steps: int = 3,
                   index: int | None = None) -> dict:
    g = {
        "m": toy(),
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["m", 0], "positive": ["m", 1], "negative": ["m", 2], "latent_image": ["lat", 0], "seed": seed,
            "steps": steps, "cfg": 2.0, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0}},
        "stats": {"class_type": "AdaSDETestLatentStats", "inputs": {"samples": ["ks", 0]}},
    }
    if index is not None:
        g["pick"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["lat", 0], "batch_index": index,
                                                                  "length": 1}}
        g["ks"]["inputs"]["latent_image"] = ["pick", 0]
    return g


def custom_graph(sampler_node: dict, sigmas_node: dict, batch: int, seed: int) -> dict:
    return {
        "m": toy(),
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}},
        "sampler": sampler_node,
        "sigmas": sigmas_node,
        "sc": {"class_type": "SamplerCustom", "inputs": {
            "model": ["m", 0], "add_noise": True, "noise_seed": seed, "cfg": 2.0, "positive": ["m", 1],
            "negative": ["m", 2], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "latent_image": ["lat", 0]}},
        "stats": {"class_type": "AdaSDETestLatentStats", "inputs": {"samples": ["sc", 0]}},
    }


def distill_graph(name: str, trajectories: int, batch: int = 2, steps: int = 2, seed: int = 0) -> dict:
    """AdaSDEDistill on the toy model, its sampler and sigmas run by SamplerCustom, its chart previewed."""
    return {
        "m": toy(),
        "d": {"class_type": "AdaSDEDistill", "inputs": {
            "model": ["m", 0], "positive": ["m", 1], "negative": ["m", 2], "prompts": "", "cfg": 2.0,
            "width": SIZE, "height": SIZE, "steps": steps, "target_nfe": 0, "teacher_M": 1, "batch": batch,
            "trajectories": trajectories, "teacher": "euler", "learning_rate": 0.05, "afs": True, "seed": seed,
            "file_name": name, "resume": True}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "sc": {"class_type": "SamplerCustom", "inputs": {
            "model": ["m", 0], "add_noise": True, "noise_seed": 1, "cfg": 2.0, "positive": ["m", 1],
            "negative": ["m", 2], "sampler": ["d", 0], "sigmas": ["d", 1], "latent_image": ["lat", 0]}},
        "stats": {"class_type": "AdaSDETestLatentStats", "inputs": {"samples": ["sc", 0]}},
        "chart": {"class_type": "PreviewImage", "inputs": {"images": ["d", 2]}},
    }


SD15_SIGMA_MIN, SD15_SIGMA_MAX = 0.0291675, 14.614642
TRAINED_FILE = "toy-sd15-3step.safetensors"


def write_trained_file(folder: Path, name: str = TRAINED_FILE, steps: int = 3, gamma: float = 0.3,
                       family: str = "sd15", rho: float = 7.0) -> Path:
    """A hand-made 'trained' coefficient set for SD1.5-range eps models with visible churn (gamma > 0), polynomial
    grid of ``rho`` (different rho -> a different grid)."""
    from adasde.coefficients import Coefficients, ModelIdentity, save
    from adasde.samplers import get_sigmas

    sig = get_sigmas("polynomial", steps + 1, SD15_SIGMA_MIN, SD15_SIGMA_MAX, rho=rho, dtype=torch.float64)
    t = lambda v: torch.full((steps, 1), float(v))  # noqa: E731
    g = t(gamma)
    g[0] = 0.0
    c = Coefficients(r=t(0.4), a=t(0.98), c=t(1.01), gamma=g, w=t(1.0), sigmas=sig, schedule="polynomial", rho=rho,
                     afs=False, model=ModelIdentity(family=family, prediction="eps", sigma_min=SD15_SIGMA_MIN,
                                                    sigma_max=SD15_SIGMA_MAX, name="toy"))
    path = folder / name
    save(c, path)
    return path


def options(spec: list) -> list[str]:
    """Combo options from /object_info (V1: [[...]], V3: ["COMBO", {"options": [...]}])."""
    return list(spec[1]["options"]) if spec[0] == "COMBO" else list(spec[0])


def close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return all(abs(x - y) <= tol * (1 + abs(y)) for x, y in zip(a, b)) and len(a) == len(b)




def sd15_info() -> Any:
    """The policy's ModelInfo of the toy model, built here from SD 1.5's published schedule (scaled-linear betas
    0.00085..0.012, 1000 steps; docs/HOSTS.md section A4), independently of the adapter's ``model_info``."""
    from adasde.policy import ModelInfo

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    table = (((1 - ac) / ac) ** 0.5).float()
    return ModelInfo(family="sd15", prediction="eps", sigma_min=float(table[0]), sigma_max=float(table[-1]),
                     model_sigmas=table)


def coefficient_dirs(server: Server) -> list[Path]:
    """The ``adasde_coefficients`` folders in the server's order (yaml folder first, then models/)."""
    return [server.coeff_dir, server.root / "base" / "models" / "adasde_coefficients"]


def plan_spec(plan: Any) -> str:
    """A plan as the JSON the ``AdaSDETestDirect`` node reads."""
    return json.dumps({"sampler": plan.sampler, "sigmas": [float(v) for v in plan.sigmas],
                       "coefficients": plan.coeffs_path, "afs": bool(plan.afs)})


def direct_node(plan: Any, latent: list, seed: int, add_noise: bool = True, cfg: float = 2.0) -> dict:
    """The library's direct call on ``plan`` with ComfyUI's noise for ``seed`` (node ``AdaSDETestDirect``)."""
    return {"class_type": "AdaSDETestDirect", "inputs": {
        "model": ["m", 0], "positive": ["m", 1], "negative": ["m", 2], "latent": latent, "seed": seed, "cfg": cfg,
        "add_noise": add_noise, "plan": plan_spec(plan)}}


def stats_node(samples: list) -> dict:
    return {"class_type": "AdaSDETestLatentStats", "inputs": {"samples": samples}}


def empty_latent(batch: int) -> dict:
    return {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}}
