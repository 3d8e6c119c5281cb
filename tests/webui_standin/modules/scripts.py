"""STAND-IN: ``modules.scripts`` (base class with the A1111 1.10 hooks and ``AlwaysVisible``)."""

AlwaysVisible = object()


class Script:
    infotext_fields = None

    def title(self):
        raise NotImplementedError

    def process(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass
