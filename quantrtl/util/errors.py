"""Errors every layer may raise about its inputs."""
from __future__ import annotations

from typing import Callable

__all__ = ["OptionError", "first_line"]


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:limit]


class OptionError(ValueError):
    """A bad argument, naming the parameter(s) at fault.

    ``text`` refers to the parameters as ``{0}``, ``{1}``, … (a text without ``{0}`` is
    read as ``"{0} " + text``).  The library says the parameter names (``lanes must be in
    1..256``); the command line renders the same error with its flags (``--lanes must be
    in 1..256``) through :meth:`render`.
    """

    def __init__(self, params: str | tuple[str, ...], text: str):
        self.params = (params,) if isinstance(params, str) else tuple(params)
        self.text = text if "{0}" in text else "{0} " + text
        super().__init__(self.render())

    def render(self, name: Callable[[str], str] = str) -> str:
        """The message with each parameter named by ``name`` (the CLI: its flag)."""
        out = self.text
        for i, p in enumerate(self.params):  # replace, not str.format: values may hold braces
            out = out.replace("{%d}" % i, name(p))
        return out
