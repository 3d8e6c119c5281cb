"""Door-independent plan records: what a door ran (grid, coefficient file, trained rows, NFE, notes), as JSON.

Every door's test saves one record per case (``save_plans``); a cross-door test loads them (``load_plans``) and
compares each door's record with the policy's (``same_plan``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def plan_record(plan: Any) -> dict[str, Any]:
    """A ``policy.Plan`` or a logged ``Plan.protocol()`` dict -> {sigmas, coefficients, offset, nfe, steps, notes}."""
    d = plan if isinstance(plan, dict) else plan.protocol()
    return {"sampler": d["sampler"], "sigmas": [float(v) for v in d["sigmas"]], "coefficients": d["coefficients"],
            "offset": d["coefficient_rows_from"], "nfe": int(d["nfe"]), "steps": int(d["steps"]),
            "notes": list(d["notes"])}


def same_plan(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-5) -> bool:
    """Equal records: same coefficient file (by real path), rows, NFE, notes; sigmas within ``rtol`` (float32 hosts)."""
    def real(p: str | None) -> str | None:
        return os.path.realpath(p) if p else None

    return (len(a["sigmas"]) == len(b["sigmas"])
            and all(abs(x - y) <= rtol * max(abs(x), abs(y), 1e-12) for x, y in zip(a["sigmas"], b["sigmas"]))
            and real(a["coefficients"]) == real(b["coefficients"]) and a["offset"] == b["offset"]
            and a["nfe"] == b["nfe"] and a["steps"] == b["steps"] and a["notes"] == b["notes"])


def save_plans(path: str | os.PathLike, cases: dict[str, dict[str, Any]]) -> Path:
    """Write ``{case: {"door": record, "policy": record, ...}}`` as JSON (merged with what the file holds)."""
    p = Path(path)
    old = json.loads(p.read_text()) if p.is_file() else {}
    old.update(cases)
    p.write_text(json.dumps(old, indent=1, sort_keys=True))
    return p


def load_plans(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    return json.loads(Path(path).read_text())
