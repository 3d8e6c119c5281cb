"""STAND-IN for the few ``gradio`` components the extension builds (records their arguments; no UI)."""

from __future__ import annotations

from typing import Any


class Component:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __enter__(self) -> Component:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class Accordion(Component):
    pass


class Dropdown(Component):
    pass


class Textbox(Component):
    pass


class Checkbox(Component):
    pass
