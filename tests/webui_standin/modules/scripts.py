"""STAND-IN: ``modules.scripts`` (base class and ``AlwaysVisible``)."""

AlwaysVisible = object()


class Script:
    infotext_fields = None

    def title(self):
        raise NotImplementedError
