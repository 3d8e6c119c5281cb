"""WebUI extension installer (run by AUTOMATIC1111 / Forge at launch with the WebUI root on ``sys.path``).

Installs only what the host lacks; never touches torch (the WebUI manages it).
"""

import launch

REQUIREMENTS = {"safetensors": "safetensors>=0.4", "scipy": "scipy>=1.10", "tqdm": "tqdm>=4.60"}

for module, spec in REQUIREMENTS.items():
    if not launch.is_installed(module):
        launch.run_pip(f'install "{spec}"', f"{spec} for the adasde extension")
