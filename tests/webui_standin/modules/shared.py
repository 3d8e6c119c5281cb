"""STAND-IN: ``modules.shared`` (``opts``, ``OptionInfo``, ``sd_model``)."""

from __future__ import annotations

from typing import Any


class OptionInfo:
    def __init__(self, default: Any = None, label: str = "", component: Any = None, component_args: Any = None,
                 onchange: Any = None, section: Any = None, refresh: Any = None, **kw: Any) -> None:
        self.default, self.label, self.component, self.component_args, self.section = (
            default, label, component, component_args, section)
        self.onchange, self.refresh = onchange, refresh  # refresh: a button next to the setting calls it


class Options:
    def __init__(self) -> None:
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, key: str) -> Any:
        if key in self.data:
            return self.data[key]
        raise AttributeError(key)

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value


opts = Options()
sd_model: Any = None
