"""Coefficient records, the safetensors + JSON file format, lookup and the official-predictor import
(docs/ARCHITECTURE.md, "Coefficients")."""

_LAZY: dict[str, tuple[str, str]] = {  # public name -> (submodule, attribute)
    "CoefficientFileError": (".io", "CoefficientFileError"),
    "Coefficients": (".record", "Coefficients"),
    "FORMAT_VERSION": (".record", "FORMAT_VERSION"),
    "ModelIdentity": (".record", "ModelIdentity"),
    "describe": (".lookup", "describe"),
    "find_coefficients": (".lookup", "find_coefficients"),
    "import_official": (".official", "import_official"),
    "list_coefficient_files": (".lookup", "list_coefficient_files"),
    "load": (".io", "load"),
    "read_header": (".io", "read_header"),
    "save": (".io", "save"),
    "scan": (".lookup", "scan"),
    "validate": (".io", "validate"),
}

__all__ = [
    "FORMAT_VERSION",
    "CoefficientFileError",
    "Coefficients",
    "ModelIdentity",
    "describe",
    "find_coefficients",
    "import_official",
    "list_coefficient_files",
    "load",
    "read_header",
    "save",
    "scan",
    "validate",
]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: import the submodule on first use (keeps the CLI light)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module[0], __name__), module[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
