"""Prompt files for text-to-image sampling and distillation (docs/ALGORITHMS.md section 3.4, SD prompts sliced by seed).

* ``.txt`` (or any non-CSV file): one prompt per line; blank lines are skipped.
* ``.csv``: a header row with a ``caption`` (or ``prompt`` / ``text``) column - the MS-COCO captions layout of the
  Stable Diffusion benchmark (``image_id,id,caption``).

Seed ``s`` uses prompt ``s mod len(prompts)``, so a sample's prompt does not depend on the batch or the rank.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .base import ModelSpecError

CAPTION_COLUMNS = ("caption", "prompt", "text")


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts of a text or CSV file (module docstring); errors name the file and the expected layout."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelSpecError(f"{p}: prompt file not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelSpecError(f"{p}: not a UTF-8 text file ({exc}); use a .txt (one prompt per line) or .csv") from exc
    if p.suffix.lower() == ".csv":
        rows = csv.reader(text.splitlines())
        header = next(rows, None)
        if not header:
            raise ModelSpecError(f"{p}: empty CSV; expected a header with a 'caption' column")
        names = [h.strip().lower() for h in header]
        col = next((names.index(c) for c in CAPTION_COLUMNS if c in names), None)
        if col is None:
            raise ModelSpecError(
                f"{p}: CSV header {header} has no 'caption' column (the MS-COCO layout image_id,id,caption); "
                "rename the prompt column to 'caption' or use a .txt file with one prompt per line"
            )
        prompts = []
        for i, row in enumerate(rows, start=2):
            if not row or not any(v.strip() for v in row):
                continue
            if col >= len(row):
                raise ModelSpecError(f"{p}:{i}: row has {len(row)} fields, the caption column is field {col + 1}")
            prompts.append(row[col].strip())
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ModelSpecError(f"{p}: no prompts found")
    return prompts


def prompts_for_seeds(prompts: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """Prompt of each seed: ``prompts[seed mod len(prompts)]``."""
    if not prompts:
        raise UsageError("prompts_for_seeds needs at least one prompt")
    return [prompts[int(s) % len(prompts)] for s in seeds]


def condition_args(prompts: Sequence[str] | None, cfg: float = 1.0, negative_prompt: str | None = None
                   ) -> dict[str, Any]:
    """``extra_args`` for a :class:`~.diffusers_denoiser.DiffusersDenoiser`: prompts (one per sample) and CFG scale."""
    out: dict[str, Any] = {}
    if prompts is not None:
        out["prompts"] = list(prompts)
        out["cfg"] = float(cfg)
        if negative_prompt:
            out["negative_prompt"] = negative_prompt
    return out


class PromptCondition:
    """A condition function for distillation / evaluation: ``cond(seeds) -> extra_args`` of that batch."""

    def __init__(self, prompts: Sequence[str], cfg: float = 7.5, negative_prompt: str | None = None):
        if not prompts:
            raise UsageError("PromptCondition needs at least one prompt")
        self.prompts = list(prompts)
        self.cfg = float(cfg)
        self.negative_prompt = negative_prompt

    @classmethod
    def from_file(cls, path: str | os.PathLike, cfg: float = 7.5, negative_prompt: str | None = None
                  ) -> PromptCondition:
        return cls(read_prompts(path), cfg, negative_prompt)

    def __len__(self) -> int:
        return len(self.prompts)

    def __call__(self, seeds: Sequence[int]) -> dict[str, Any]:
        return condition_args(prompts_for_seeds(self.prompts, seeds), self.cfg, self.negative_prompt)

    def distill_condition(self, batch: int) -> Callable[[int, torch.Generator], dict[str, Any]]:
        """``condition_fn(iteration, rng)`` for ``adasde.distill.distill``: ``batch`` prompts drawn with ``rng``
        (so a resumed or multi-rank run sees the same prompts per iteration)."""

        def fn(iteration: int, rng: torch.Generator) -> dict[str, Any]:
            idx = torch.randint(len(self.prompts), (batch,), generator=rng).tolist()
            return condition_args([self.prompts[i] for i in idx], self.cfg, self.negative_prompt)

        return fn
