"""The sampling policy (docs/ALGORITHMS.md section 10): which grid, which coefficient file, which trained rows, how
many model calls and what to tell the user, decided once for every door."""

from .model import LEARNED, ModelInfo
from .plan import (
    AUTO,
    UNTRAINED,
    Plan,
    candidates,
    check_file,
    fallback_note,
    plan,
    plan_for_sigmas,
    schedule_for,
    steps_for,
)

__all__ = [
    "AUTO",
    "LEARNED",
    "UNTRAINED",
    "ModelInfo",
    "Plan",
    "candidates",
    "check_file",
    "fallback_note",
    "plan",
    "plan_for_sigmas",
    "schedule_for",
    "steps_for",
]
