"""STAND-IN: ``modules.script_callbacks`` (only ``on_ui_settings``)."""

callbacks_ui_settings: list = []


def on_ui_settings(fn) -> None:
    callbacks_ui_settings.append(fn)
