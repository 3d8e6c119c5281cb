"""STAND-IN: ``modules.paths`` (only ``models_path``)."""

models_path = ""
