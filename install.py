"""WebUI extension installer (run by AUTOMATIC1111 / Forge at launch with the WebUI root on ``sys.path``).

Installs only what the host lacks; never touches torch (the WebUI manages it).  Outside the WebUI (ComfyUI-Manager
also runs a custom node's ``install.py``) there is no ``launch`` module and this file does nothing: there the
dependencies come from ``pyproject.toml`` / ``requirements.txt``.
"""

try:
    import launch
except ImportError:
    launch = None

REQUIREMENTS = {"safetensors": "safetensors>=0.4", "scipy": "scipy>=1.10", "tqdm": "tqdm>=4.60"}

if launch is not None:
    for module, spec in REQUIREMENTS.items():
        if not launch.is_installed(module):
            launch.run_pip(f'install "{spec}"', f"{spec} for the adasde extension")
