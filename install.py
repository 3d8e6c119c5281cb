"""WebUI extension installer, run by AUTOMATIC1111 / Forge at launch with the WebUI root on ``sys.path``
(docs/HOSTS.md section C1).

Through the WebUI's ``launch`` module it pip-installs ``safetensors``, ``scipy`` and ``tqdm`` when one of them is
missing, and nothing else: torch, numpy and pillow belong to the WebUI.  Outside the WebUI (ComfyUI-Manager also runs
a custom node's ``install.py``) there is no ``launch`` module and the file does nothing: ComfyUI already ships every
package adasde needs, and ``pip install adasde`` takes the dependencies from ``pyproject.toml``.
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
