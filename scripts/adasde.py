"""AUTOMATIC1111 / Forge extension entry point: registers the AdaSDE and AMED samplers and the AdaSDE scheduler, adds
the AdaSDE settings section and a small always-visible script section (docs/HOSTS.md section C; logic in ``webui/``).

The WebUI executes this file as a loose module (not as part of a package), so it first finds our package:

1. ``import adasde`` when that is this very folder (pip ``-e`` install, or a previous load);
2. otherwise the extension folder (the repository root, which is the package) is loaded with importlib under the name
   ``adasde`` -- or, if another ``adasde`` is installed, under the private name ``adasde_webui_extension`` so the
   extension always runs its own code.  Relative imports inside the package make the name irrelevant.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

from modules import script_callbacks, scripts, shared

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("adasde")


def load_package(root: Path = ROOT, name: str = "adasde") -> ModuleType:
    """The adasde package that lives in ``root`` (see the module docstring for the order)."""
    for candidate in (name, "adasde_webui_extension"):
        mod = sys.modules.get(candidate)
        if mod is None and candidate == name:
            try:
                mod = importlib.import_module(name)
            except ImportError:
                mod = None
        if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve().parent == root:
            return mod
    target = name if name not in sys.modules else "adasde_webui_extension"  # the import above failed or is foreign
    spec = importlib.util.spec_from_file_location(target, root / "__init__.py", submodule_search_locations=[str(root)])
    if spec is None or spec.loader is None:
        raise ImportError(f"adasde: cannot load the extension folder {root} as a package (no __init__.py?)")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[target] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(target, None)
        raise
    return mod


webui = importlib.import_module(".webui", load_package().__name__)

try:
    webui.register()
except Exception as exc:  # noqa: BLE001 - never break the WebUI start-up
    log.error("adasde: could not register the AdaSDE/AMED samplers: %s", exc)
    print(f"[adasde] could not register the AdaSDE/AMED samplers: {exc}", file=sys.stderr)


def on_ui_settings() -> None:
    """Settings > AdaSDE: default coefficient choice (with a refresh button), ComfyUI coefficient folder, final
    denoise to sigma = 0."""
    import gradio as gr

    core = webui.core
    section = ("adasde", "AdaSDE")
    choices = lambda: {"choices": [core.CHOICE_AUTO, core.CHOICE_UNTRAINED, *core.available_files()]}  # noqa: E731
    shared.opts.add_option(core.OPT_CHOICE, shared.OptionInfo(
        core.CHOICE_AUTO, "Coefficients for the AdaSDE / AMED samplers ('auto': the best file for the model and steps)",
        gr.Dropdown, choices, refresh=core.refresh_files, section=section))
    shared.opts.add_option(core.OPT_COMFY_DIR, shared.OptionInfo(
        "", "Also search a ComfyUI folder (its models/adasde_coefficients)", gr.Textbox, section=section))
    shared.opts.add_option(core.OPT_DENOISE, shared.OptionInfo(
        False, "AdaSDE scheduler: final denoise to sigma = 0 (+1 model call)", gr.Checkbox, section=section))


script_callbacks.on_ui_settings(on_ui_settings)


class Script(scripts.Script):
    """Per-generation coefficient choice for the AdaSDE / AMED samplers (always visible, collapsed)."""

    def title(self) -> str:
        return "AdaSDE"

    def show(self, is_img2img: bool) -> object:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr

        core = webui.core

        def names() -> list[str]:
            return [core.CHOICE_SETTINGS, core.CHOICE_AUTO, core.CHOICE_UNTRAINED, *core.available_files()]

        with gr.Accordion("AdaSDE / AMED coefficients", open=False):
            choice = gr.Dropdown(label="Coefficients (used by the AdaSDE and AMED samplers)",
                                 value=core.CHOICE_SETTINGS, choices=names())
            refresh = gr.Button(value="\U0001f504", elem_id="adasde_refresh_coefficients")
            refresh.click(fn=lambda: gr.update(choices=[*names()[:3], *core.refresh_files()]), inputs=[],
                          outputs=[choice])
        self.infotext_fields = [(choice, core.INFOTEXT_FILE)]
        return [choice]

    def process(self, p: object, choice: str = "(Settings)", *args: object) -> None:
        p.adasde_coefficients = choice

    def process_before_every_sampling(self, p: object, *args: object, **kwargs: object) -> None:
        webui.core.set_generation(p)

    def postprocess(self, p: object, processed: object, *args: object) -> None:
        webui.core.set_generation(None)
