"""``import-official`` and the ``diffusers:`` loader under hostile input: allocation bombs in a pickle, foreign
modules named by ``model_index.json``."""

from __future__ import annotations

import json

import pytest
from adasde.coefficients import CoefficientFileError, import_official

N = 300_000_000  # just above the per-object bound (kept modest so that an unfixed reader does not exhaust memory)


def _call(module: str, name: str, arg: bytes) -> bytes:
    """Protocol-2 pickle of ``module.name(*args)`` with ``arg`` the pickled argument opcodes."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"(" + arg + b"tR."


def _int(n: int) -> bytes:
    return b"\x8a\x05" + n.to_bytes(5, "little")  # LONG1


CASES = {
    "bytearray": _call("builtins", "bytearray", _int(N)),
    "bytes": _call("builtins", "bytes", _int(N)),
    "storage": _call("torch", "FloatStorage", _int(N // 4)),
    "list-range": b"\x80\x02cbuiltins\nlist\n(cbuiltins\nrange\n(" + _int(N // 8) + b"tRtR.",
    "numpy-ndarray": b"\x80\x02cnumpy\nndarray\n(" + _int(N // 8) + b"\x85X\x02\x00\x00\x00f8tR.",
    "numpy-reconstruct": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + _int(N // 8)
                         + b"\x85X\x02\x00\x00\x00f8tR.",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_small_pickle_cannot_allocate_much(tmp_path, case):
    p = tmp_path / "bomb.pkl"
    p.write_bytes(CASES[case])
    assert p.stat().st_size < 80
    with pytest.raises(CoefficientFileError, match="too large"):  # refused before anything is allocated
        import_official(p)


def test_diffusers_folder_naming_a_foreign_module_is_refused(tmp_path):
    from adasde.loaders.base import ModelSpecError
    from adasde.models import load_model

    d = tmp_path / "model"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                    "unet": ["json", "JSONDecoder"],
                                                    "scheduler": ["diffusers", "DDIMScheduler"]}))
    with pytest.raises(ModelSpecError, match=r"model_index.json.*'json'.*diffusers, transformers"):
        load_model(f"diffusers:{d}")
