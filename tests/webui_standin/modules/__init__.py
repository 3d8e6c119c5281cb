"""STAND-IN for the WebUI ``modules`` package (tests only; see ../README.md)."""
