"""AdaSDE distillation recipes per NFE: the settings ``adasde distill`` uses unless the user overrides them.

One table, chosen by held-out teacher loss (the student's distance to a common dpm2 M = 3 teacher on trajectories no
run trains on; never an image-feature metric) among the published per-NFE settings (docs/ALGORITHMS.md section 3.5
table) and one-factor changes of them (lr, batch, scale_dir, gamma_max), measured on the controlled-error
Gaussian-mixture testbed at 4,000 trajectories, 2 seeds (``bench/results/recipes.md``, ``adasde bench recipes``).
Differences from the published settings: NFE 5 takes scale_dir 0.1 (held-out loss -32 %), NFE 3 gamma_max 0.01
(a tie, -0.3 %); NFE 7 and 9 keep the published settings, which won.  The trajectory budget is the papers' 10,000.
All use K = 1, AFS, s_a 0.2, the dpm2 teacher, cosine annealing and the scan start (:mod:`.robust`).  An NFE between
table rows takes the next larger row's settings; beyond the table, the largest row's.

Per model (:data:`MODEL_BUDGETS`): the built-in Fashion-MNIST model trains on a CPU and keeps the settings its
shipped files were distilled with (3,000 trajectories, s_c 0.05, the random start): on it the GMM-chosen NFE-5 row
(s_c 0.1, scan start) scored FD-FMNIST 157.5 / 172.0 on two 2,000-image seed blocks against 109.6 / 118.5 for the
shipped settings and 134.3 / 152.7 for dpmpp_3m (``bench/results/policy.md``).
"""

from __future__ import annotations

from typing import Any

RECIPE_KEYS = ("M", "scale_dir", "gamma_max", "lr", "batch", "trajectories")

#: NFE -> settings (M, scale_dir, gamma_max, lr, batch, trajectories)
RECIPES: dict[int, dict[str, Any]] = {
    3: {"M": 3, "scale_dir": 0.05, "gamma_max": 0.01, "lr": 0.2, "batch": 32, "trajectories": 10_000},
    5: {"M": 3, "scale_dir": 0.1, "gamma_max": 0.01, "lr": 0.2, "batch": 32, "trajectories": 10_000},
    7: {"M": 3, "scale_dir": 0.1, "gamma_max": 0.01, "lr": 0.2, "batch": 32, "trajectories": 10_000},
    9: {"M": 2, "scale_dir": 0.1, "gamma_max": 0.01, "lr": 0.2, "batch": 32, "trajectories": 10_000},
}


#: model family -> settings that replace the NFE row's (measured on that model)
MODEL_BUDGETS: dict[str, dict[str, Any]] = {
    "builtin-fmnist": {"trajectories": 3_000, "scale_dir": 0.05, "init": "random"},
}


def recipe(nfe: int, family: str | None = None) -> dict[str, Any]:
    """The recipe for ``nfe`` (a copy): the row of the smallest tabled NFE >= ``nfe``, else the largest row, with the
    model family's budget (:data:`MODEL_BUDGETS`) applied."""
    keys = sorted(RECIPES)
    row = next((k for k in keys if k >= int(nfe)), keys[-1])
    return {**RECIPES[row], **MODEL_BUDGETS.get(str(family), {})}


def nfe_of(num_steps: int, afs: bool, K: int = 1) -> int:  # noqa: N803
    """NFE of an AdaSDE run with ``num_steps`` grid points: (1 + K)(N - 1) - [afs] (section 3.3)."""
    return (1 + int(K)) * (int(num_steps) - 1) - int(bool(afs))
