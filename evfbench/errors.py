"""User-facing errors: each message names the file or field at fault and the fix.

Command-line entry points print these without a traceback (:func:`cli`); anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class EvfbenchError(RuntimeError):
    """Bad input or an impossible request, explained for the user."""


def cli(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a ``main(argv) -> exit code``: an :class:`EvfbenchError` becomes ``error: ...`` and exit 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except EvfbenchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper
