"""User-facing errors: each message names the file or field at fault and the fix.

Command-line entry points print these without a traceback; anything else is a bug and
keeps its traceback.
"""


class EvfbenchError(RuntimeError):
    """Bad input or an impossible request, explained for the user."""
