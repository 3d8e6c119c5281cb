"""STAND-IN for the few ``gradio`` components the extension builds (records their arguments; no UI)."""

from __future__ import annotations

from typing import Any


class Component:
    created: list = []  # every component built, in order (tests look up the ones they need)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        Component.created.append(self)

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


class Button(Component):
    def click(self, fn: Any = None, inputs: Any = None, outputs: Any = None, **kwargs: Any) -> None:
        self.handler, self.outputs = fn, outputs


def update(**kwargs: Any) -> dict:
    return {"__type__": "update", **kwargs}
