"""Python model builder (stub: being written)."""


class ModelBuilder:
    pass
