"""End-to-end tests against the real ComfyUI 0.30.0 server (docs/HOSTS.md section B10), one subprocess per session.

ComfyUI comes from ``tools/install_comfyui.sh`` (``$ADASDE_COMFYUI_DIR``, default ``.cache/comfyui``).  Our repository
root is loaded as a custom node through the ``custom_nodes:`` key of an extra_model_paths yaml (a symlink named
``adasde``), next to the test pack ``tests/comfy_test_pack`` (tiny random SD1.5-shaped model).  Everything talks to
the server over HTTP: POST /prompt, GET /history, GET /object_info, POST /interrupt.

Without ComfyUI the tests skip, except in CI (``CI=true``), where a missing ComfyUI fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("ADASDE_COMFYUI_DIR") or REPO / ".cache" / "comfyui")
TEST_PACK = REPO / "tests" / "comfy_test_pack"
SIZE = 32  # image size -> 4 x 4 latents: the toy UNet runs in milliseconds

pytestmark = [pytest.mark.comfyui]


def require_comfyui() -> None:
    if (COMFY / "main.py").is_file():
        return
    msg = (f"real ComfyUI not found at {COMFY} (set ADASDE_COMFYUI_DIR or run tools/install_comfyui.sh)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI: " + msg)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.coeff_dir = root / "user_coefficients"
        self.output_dir = root / "base" / "output"
        self.log_path = root / "server.log"
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None

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
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not come up in 180 s:\n{self.tail()}")

    def stop(self) -> None:
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

    def run(self, prompt: dict, timeout: float = 120) -> dict:
        entry = self.wait(self.queue(prompt), timeout)
        assert entry["status"]["status_str"] == "success", (json.dumps(entry["status"], indent=1)[-3000:],
                                                           self.tail())
        return entry

    def object_info(self, node: str) -> dict:
        return self.get(f"/object_info/{node}")[node]


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Server:
    require_comfyui()
    srv = Server(tmp_path_factory.mktemp("comfyui"))
    try:
        srv.start()
    except Exception:
        srv.stop()
        raise
    yield srv
    srv.stop()


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


SD15_SIGMA_MIN, SD15_SIGMA_MAX = 0.0291675, 14.614642
TRAINED_FILE = "toy-sd15-3step.safetensors"


def write_trained_file(folder: Path, name: str = TRAINED_FILE, steps: int = 3, gamma: float = 0.3) -> Path:
    """A hand-made 'trained' coefficient set for SD1.5 eps models with visible churn (gamma > 0), polynomial grid."""
    from adasde.coefficients import Coefficients, ModelIdentity, save
    from adasde.samplers import get_sigmas

    sig = get_sigmas("polynomial", steps + 1, SD15_SIGMA_MIN, SD15_SIGMA_MAX, rho=7.0, dtype=torch.float64)
    t = lambda v: torch.full((steps, 1), float(v))  # noqa: E731
    g = t(gamma)
    g[0] = 0.0
    c = Coefficients(r=t(0.4), a=t(0.98), c=t(1.01), gamma=g, w=t(1.0), sigmas=sig, schedule="polynomial", rho=7.0,
                     afs=False, model=ModelIdentity(family="sd15", prediction="eps", sigma_min=SD15_SIGMA_MIN,
                                                    sigma_max=SD15_SIGMA_MAX, name="toy"))
    path = folder / name
    save(c, path)
    return path


def options(spec: list) -> list[str]:
    """Combo options from /object_info (V1: [[...]], V3: ["COMBO", {"options": [...]}])."""
    return list(spec[1]["options"]) if spec[0] == "COMBO" else list(spec[0])


def _close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return all(abs(x - y) <= tol * (1 + abs(y)) for x, y in zip(a, b)) and len(a) == len(b)


# ------------------------------------------------------------------------------------------------------ tests
def test_registration_in_dropdowns_and_nodes(comfy: Server) -> None:
    ks = comfy.object_info("KSampler")["input"]["required"]
    assert {"adasde", "amed"} <= set(options(ks["sampler_name"]))
    assert options(ks["scheduler"]).count("adasde") == 1
    sel = options(comfy.object_info("KSamplerSelect")["input"]["required"]["sampler_name"])
    assert sel.count("adasde") == 1 and sel.count("amed") == 1  # idempotent: import + on_load register once
    assert "adasde" in options(comfy.object_info("BasicScheduler")["input"]["required"]["scheduler"])
    for node in ("AdaSDESampler", "AdaSDESigmas", "AMEDSampler", "AdaSDEDistill", "AdaSDEFIDEvaluate",
                 "AdaSDESaveFIDReferenceStats"):
        assert comfy.object_info(node)["python_module"].startswith("custom_nodes.")


def test_ksampler_dropdown_auto_coefficients_match_custom_node_and_batch(comfy: Server) -> None:
    write_trained_file(comfy.coeff_dir)
    combo = options(comfy.object_info("AdaSDESampler")["input"]["required"]["coefficients"])
    assert TRAINED_FILE in combo, combo  # listed without a restart (user folder from extra_model_paths.yaml)

    # KSampler dropdown: sampler 'adasde' + scheduler 'adasde' -> the trained grid, auto-selected coefficients.
    b2 = stats_of(comfy.run(ksampler_graph(batch=2, seed=7)))
    b1 = stats_of(comfy.run(ksampler_graph(batch=1, seed=7)))
    assert len(b2) == 2 and all(abs(s["std"]) > 0 for s in b2)
    assert _close(b1[0]["first"], b2[0]["first"]), (b1[0]["first"][:4], b2[0]["first"][:4])  # same seed, same image
    # the second image of the batch, alone (LatentFromBatch sets batch_index=1 -> same initial noise)
    alone = stats_of(comfy.run(ksampler_graph(batch=2, seed=7, index=1)))
    assert _close(alone[0]["first"], b2[1]["first"]), (alone[0]["first"][:4], b2[1]["first"][:4])

    # SamplerCustom + AdaSDE Sampler(file) + AdaSDE Sigmas(file) gives exactly the dropdown's result ...
    sig_node = {"class_type": "AdaSDESigmas", "inputs": {"model": ["m", 0], "coefficients": TRAINED_FILE,
                                                         "steps": 3, "denoise": 1.0}}
    smp = {"class_type": "AdaSDESampler", "inputs": {"coefficients": TRAINED_FILE, "afs": "auto", "s_noise": 1.0}}
    custom = stats_of(comfy.run(custom_graph(smp, sig_node, batch=1, seed=7)))
    assert _close(custom[0]["first"], b1[0]["first"])
    # ... and differs from untrained AdaSDE on the same grid (the coefficients really were used)
    smp_u = {"class_type": "AdaSDESampler", "inputs": {"coefficients": "untrained", "afs": "auto", "s_noise": 1.0}}
    untrained = stats_of(comfy.run(custom_graph(smp_u, sig_node, batch=1, seed=7)))
    assert not _close(untrained[0]["first"], b1[0]["first"], tol=1e-3)


def test_ksampler_fallback_warns_and_runs(comfy: Server) -> None:
    entry = comfy.run(ksampler_graph(batch=1, seed=3, scheduler="karras", steps=2))
    assert all(s["std"] > 0 for s in stats_of(entry))
    assert "no adasde coefficient file" in comfy.tail(200)


def distill_graph(name: str, trajectories: int, batch: int = 2, steps: int = 2, seed: int = 0) -> dict:
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


def test_distill_node_writes_listed_file_and_outputs(comfy: Server) -> None:
    entry = comfy.run(distill_graph("toy-distilled", trajectories=4), timeout=180)
    summary = entry["outputs"]["d"]["adasde_distill"][0]
    assert summary["file"] == "toy-distilled.safetensors" and summary["steps"] == 2 and summary["nfe"] == 3
    assert len(summary["losses"]) == 2 and all(v > 0 for v in summary["losses"])
    assert (comfy.coeff_dir / "toy-distilled.safetensors").is_file()  # first (user) folder of the merged list
    opts = options(comfy.object_info("AdaSDESampler")["input"]["required"]["coefficients"])
    assert "toy-distilled.safetensors" in opts  # appears in the combo without restart
    assert all(s["std"] > 0 for s in stats_of(entry))  # the returned SAMPLER + SIGMAS sample
    assert entry["outputs"]["chart"]["images"], entry["outputs"]["chart"]  # IMAGE of loss curve + coefficients

    from adasde.coefficients import load

    c = load(comfy.coeff_dir / "toy-distilled.safetensors")
    assert c.model.family == "sd15" and c.model.prediction == "eps" and c.afs
    assert abs(float(c.sigmas[0]) - SD15_SIGMA_MAX) < 1e-3 and abs(float(c.sigmas[-1]) - SD15_SIGMA_MIN) < 1e-4


def test_interrupt_during_distillation_keeps_checkpoint_and_resumes(comfy: Server) -> None:
    name = "toy-interrupted"
    ckpt = comfy.output_dir / "adasde_distill" / f"{name}.ckpt.safetensors"
    pid = comfy.queue(distill_graph(name, trajectories=40, seed=3))
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), comfy.tail()
    comfy.post("/interrupt", {})
    entry = comfy.wait(pid, timeout=120)
    assert entry["status"]["status_str"] == "error"
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert ckpt.exists(), "the checkpoint must survive a Cancel"
    assert not (comfy.coeff_dir / f"{name}.safetensors").exists()
    from adasde.distill.checkpoint import load_checkpoint

    done = int(load_checkpoint(ckpt)[1]["iteration"])
    assert 1 <= done < 20

    entry = comfy.run(distill_graph(name, trajectories=40, seed=3), timeout=240)
    from adasde.coefficients import load

    c = load(comfy.coeff_dir / f"{name}.safetensors")
    assert c.training["resumed_from"] == done and c.training["iterations"] == 20
    assert not ckpt.exists()  # removed after a completed run


def write_amed_file(folder: Path, name: str, enc_seed: int, steps: int = 3) -> Path:
    """An AMED coefficient set whose predictor (seed-fixed) reads the bottleneck; ``enc_seed`` changes only the
    feature encoder, so two files differ in output only if real bottleneck features reach the predictor."""
    from adasde.coefficients import Coefficients, ModelIdentity, save
    from adasde.samplers import AMEDPredictor, get_sigmas

    sig = get_sigmas("polynomial", steps + 1, SD15_SIGMA_MIN, SD15_SIGMA_MAX, rho=7.0, dtype=torch.float64)
    pred = AMEDPredictor(scale_dir=0.1, scale_time=0.1, seed=0)
    g = torch.Generator().manual_seed(enc_seed)
    with torch.no_grad():
        pred.enc1.weight.copy_(torch.randn(pred.enc1.weight.shape, generator=g) * 3.0)
    t = lambda v: torch.full((steps, 1), float(v))  # noqa: E731
    c = Coefficients(r=t(0.5), a=t(1.0), c=t(1.0), gamma=t(0.0), w=t(1.0), sigmas=sig, schedule="polynomial",
                     rho=7.0, afs=False, kind="amed", predictor={k: v.clone() for k, v in pred.state_dict().items()},
                     predictor_config=pred.config(),
                     model=ModelIdentity(family="sd15", prediction="eps", sigma_min=SD15_SIGMA_MIN,
                                         sigma_max=SD15_SIGMA_MAX))
    path = folder / name
    save(c, path)
    return path


def test_amed_sampler_reads_bottleneck_without_touching_the_model(comfy: Server) -> None:
    write_amed_file(comfy.coeff_dir, "toy-amed-a.safetensors", enc_seed=1)
    write_amed_file(comfy.coeff_dir, "toy-amed-b.safetensors", enc_seed=2)
    euler = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    grid = {"class_type": "AdaSDESigmas", "inputs": {"model": ["m", 0], "coefficients": "toy-amed-a.safetensors",
                                                     "steps": 3, "denoise": 1.0}}
    before = stats_of(comfy.run(custom_graph(euler, grid, batch=1, seed=11)))
    outs = []
    for f in ("toy-amed-a.safetensors", "toy-amed-b.safetensors"):
        amed = {"class_type": "AMEDSampler", "inputs": {"coefficients": f, "afs": "auto"}}
        outs.append(stats_of(comfy.run(custom_graph(amed, grid, batch=2, seed=11))))
    assert all(s["std"] > 0 for o in outs for s in o)
    # different feature encoders -> different results: the UNet bottleneck really reached the predictor
    assert not _close(outs[0][0]["first"], outs[1][0]["first"], tol=1e-5)
    after = stats_of(comfy.run(custom_graph(euler, grid, batch=1, seed=11)))
    assert after[0]["sha"] == before[0]["sha"]  # the user's model (options) was not modified by the patch
    # the KSampler dropdown entry 'amed' runs too (auto-selects an AMED file for the grid)
    ks = ksampler_graph(batch=1, seed=11, sampler="amed", scheduler="adasde")
    assert all(s["std"] > 0 for s in stats_of(comfy.run(ks)))


def _random_images(seed: int, count: int, size: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)  # same recipe as the test pack's AdaSDETestImages
    return (torch.rand(count, size, size, 3, generator=g) * 0.8 + 0.1).clamp(0, 1)


def test_fid_nodes_reference_and_accumulation(comfy: Server) -> None:
    ref = {"imgs": {"class_type": "AdaSDETestImages", "inputs": {"seed": 0, "count": 24, "size": 28, "shift": 0.0}},
           "save": {"class_type": "AdaSDESaveFIDReferenceStats", "inputs": {
               "images": ["imgs", 0], "feature_net": "fmnist", "file_name": "toyref", "mode": "overwrite"}}}
    comfy.run(ref)

    def fid_graph(seed: int, reset: bool) -> dict:
        return {"imgs": {"class_type": "AdaSDETestImages", "inputs": {"seed": seed, "count": 8, "size": 28,
                                                                     "shift": 0.1}},
                "fid": {"class_type": "AdaSDEFIDEvaluate", "inputs": {
                    "images": ["imgs", 0], "reference": "toyref.npz", "feature_net": "fmnist", "accumulator": "acc",
                    "reset": reset}}}

    r1 = comfy.run(fid_graph(1, True))["outputs"]["fid"]["adasde_fid"][0]
    r2 = comfy.run(fid_graph(2, False))["outputs"]["fid"]["adasde_fid"][0]
    assert r1["num_images"] == 8 and r2["num_images"] == 16 and r2["metric"] == "FD-FMNIST"
    assert (comfy.output_dir / "adasde_fid" / "acc.npz").is_file()

    # the accumulated value equals a direct computation over all 16 images
    from adasde.evaluation.features import load_feature_net
    from adasde.evaluation.metrics import frechet_distance
    from adasde.evaluation.reference import load_stats
    from adasde.evaluation.stats import RunningStats

    net = load_feature_net("fmnist")

    def feats(x: torch.Tensor) -> torch.Tensor:
        return net(x.permute(0, 3, 1, 2))

    want_ref = RunningStats(net.dim).update(feats(_random_images(0, 24)))
    ref_file = load_stats(Path(r2["reference"]))
    assert abs(ref_file.mu - want_ref.mu).max() < 1e-4
    imgs = torch.cat([(_random_images(s, 8) + 0.1).clamp(0, 1) for s in (1, 2)])
    gen = RunningStats(net.dim).update(feats(imgs))
    want = float(frechet_distance(gen.mu, gen.sigma, want_ref.mu, want_ref.sigma))
    assert abs(r2["value"] - want) <= 1e-3 * max(1.0, abs(want)), (r2["value"], want)
    assert r2["value"] > 0


# ------------------------------------------------------------------------------------------------ headless browser
CHROMIUM = os.environ.get("ADASDE_CHROMIUM", "/usr/bin/chromium")


class CDP:
    """A minimal Chrome DevTools Protocol client (websocket-client) for one page target."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.i = 0

    def call(self, method: str, **params: Any) -> dict:
        self.i += 1
        self.ws.send(json.dumps({"id": self.i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expr: str, timeout: float = 30) -> Any:
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True,
                      timeout=int(timeout * 1000))
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error in {expr[:80]!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 90) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                v = self.eval(expr)
            except RuntimeError:
                v = None
            if v:
                return v
            time.sleep(0.5)
        raise TimeoutError(f"browser condition not met in {timeout} s: {expr}")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="session")
def browser(comfy: Server, tmp_path_factory: pytest.TempPathFactory):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: Chromium not found at {CHROMIUM}")
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    pytest.importorskip("websocket", reason="pip install websocket-client")
    profile = tmp_path_factory.mktemp("chromium")
    port = _free_port()
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--remote-allow-origins=*",
           "--window-size=1400,1100", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        targets = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                if targets:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.3)
        assert targets, "Chromium DevTools endpoint did not come up"
        cdp = CDP(targets[0]["webSocketDebuggerUrl"])
        yield cdp
        cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pink_pixels(png: bytes) -> int:
    import io

    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    # LOSS_COLOR in web/adasde.js is #ff40a0
    return int(((abs(a[..., 0] - 255) < 30) & (abs(a[..., 1] - 64) < 40) & (abs(a[..., 2] - 160) < 40)).sum())


@pytest.mark.chromium
def test_web_extension_draws_live_distill_chart(comfy: Server, browser: CDP, tmp_path: Path) -> None:
    import base64

    browser.call("Page.enable")
    browser.call("Runtime.enable")
    # first-run UI (templates browser) would cover the canvas: mark the tutorial as done for this fresh user
    comfy.post("/settings", {"Comfy.TutorialCompleted": True})
    browser.call("Page.navigate", url=comfy.url + "/")
    browser.wait_for("!!(window.app && window.app.graph && window.LiteGraph && window.__adasdeRegistered)", 120)
    scripts = browser.eval("JSON.stringify(window.app.extensions.map(e => e.name))")
    assert "adasde.ui" in json.loads(scripts)
    node_id = browser.eval("""(async () => {
        const app = window.app;
        app.graph.clear();
        const n = LiteGraph.createNode("AdaSDEDistill");
        n.pos = [220, 140];
        app.graph.add(n);
        app.canvas.ds.offset = [0, 0];
        app.canvas.ds.scale = 1;
        app.graph.setDirtyCanvas(true, true);
        return n.id;
    })()""")
    assert node_id is not None
    assert browser.eval(f"window.app.graph.getNodeById({node_id}).size[1]") > 190  # room for the chart

    # a real distillation queued over HTTP with the same node id: the server broadcasts progress events
    g = distill_graph("toy-web", trajectories=4)
    prompt = {str(node_id) if k == "d" else k: v for k, v in g.items()}
    for v in prompt.values():
        for key, inp in v["inputs"].items():
            if isinstance(inp, list) and inp[0] == "d":
                v["inputs"][key] = [str(node_id), inp[1]]
    comfy.run(prompt, timeout=180)
    events = browser.wait_for("window.__adasde.events >= 3 && window.__adasde.events", 60)
    last = json.loads(browser.eval("JSON.stringify(window.__adasde.last)"))
    assert last["node"] == str(node_id) and last.get("finished") and len(last["losses"]) == 2, last
    assert events >= 3  # two iterations + the final event
    assert browser.eval(f"!!window.app.graph.getNodeById({node_id}).__adasdeDistill")
    browser.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'})); true")
    browser.eval("window.app.graph.setDirtyCanvas(true, true); window.app.canvas.draw(true, true); true")
    time.sleep(1.0)
    png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    out = Path(os.environ.get("ADASDE_SCREENSHOT_DIR", tmp_path)) / "comfyui-distill-node.png"
    out.write_bytes(png)
    assert _pink_pixels(png) > 50, f"no loss curve pixels in the screenshot {out}"


def test_example_workflows_match_the_running_node_schemas(comfy: Server) -> None:
    info = comfy.get("/object_info")
    api_files = sorted((REPO / "workflows").glob("*_api.json"))
    assert {f.stem for f in api_files} >= {"adasde_txt2img_api", "adasde_distill_api", "adasde_fid_api"}
    for f in api_files:
        graph = json.loads(f.read_text())
        for nid, node in graph.items():
            assert node["class_type"] in info, (f.name, nid, node["class_type"])
            schema = info[node["class_type"]]["input"]
            missing = set(schema.get("required", {})) - set(node["inputs"])
            assert not missing, (f.name, nid, missing)
            unknown = set(node["inputs"]) - set(schema.get("required", {})) - set(schema.get("optional", {}))
            assert not unknown, (f.name, nid, unknown)
            for k, v in node["inputs"].items():
                if isinstance(v, list):
                    assert v[0] in graph, (f.name, nid, k, v)
        ui = f.with_name(f.name.replace("_api", ""))
        assert ui.is_file(), f"missing UI-format twin {ui.name}"
        types = {n["type"] for n in json.loads(ui.read_text())["nodes"]}
        assert types == {n["class_type"] for n in graph.values()}, (ui.name, types)
