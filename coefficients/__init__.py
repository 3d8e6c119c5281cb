"""Coefficient records, the safetensors + JSON file format, lookup and the official-predictor import
(docs/ARCHITECTURE.md, "Coefficients")."""

from .._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
