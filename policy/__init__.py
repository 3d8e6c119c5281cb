"""The sampling policy (docs/ALGORITHMS.md section 10): which grid, which coefficient file, which trained rows, how
many model calls and what to tell the user, decided once for every door.  ``presets`` holds the release's
per-dataset settings.  Names are imported on first use (the CLI parser reads ``presets`` without torch)."""

from .._lazy import lazy_exports

_LAZY: dict[str, tuple[str, str]] = {name: (".plan", name) for name in (
    "AUTO", "UNTRAINED", "Plan", "candidates", "check_file", "fallback_note", "plan", "plan_for_sigmas",
    "schedule_for", "steps_for")} | {name: (".model", name) for name in ("LEARNED", "ModelInfo")}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
