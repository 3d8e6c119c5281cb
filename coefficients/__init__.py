"""Coefficient records, the safetensors + JSON file format and lookup (docs/ARCHITECTURE.md)."""

from .record import FORMAT_VERSION, Coefficients, ModelIdentity

__all__ = ["FORMAT_VERSION", "Coefficients", "ModelIdentity"]
