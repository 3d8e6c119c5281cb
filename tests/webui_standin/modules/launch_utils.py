"""STAND-IN: ``modules.launch_utils`` (only ``git_tag``; the real one asks git, see ``standin.configure``)."""

tag = "v1.10.1"


def git_tag() -> str:
    return tag
