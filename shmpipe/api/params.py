"""ParamError: a plug-in's ``Params.validate()`` refusing one of its keys by name."""

from __future__ import annotations


class ParamError(ValueError):
    """A parameter with a refused value; the configuration error names ``<section>.<key>``.

    Raise it from ``Params.validate()`` (a plain ``ValueError`` names only the section)::

        if self.frames < 0:
            raise ParamError("frames", f"must be 0 or more, got {self.frames}")
    """

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")

    def __reduce__(self):
        return type(self), (self.key, self.message)
