"""Coefficient records, the safetensors + JSON file format, lookup and the official-predictor import
(docs/ARCHITECTURE.md, "Coefficients")."""

from .io import CoefficientFileError, load, read_header, save, validate
from .lookup import describe, find_coefficients, list_coefficient_files, scan
from .official import import_official
from .record import FORMAT_VERSION, Coefficients, ModelIdentity

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
