"""Load the refer ``refs(<split_by>).p`` files without letting them run code.

A pickle is a program: any global it names (``os.system``, ``subprocess.Popen``, ...) is
imported and may be called while loading. The refer files are Python 2 pickles of plain
lists, dicts, strings and numbers, which need no global at all, so the unpickler here refuses
every global except the two container types ``set`` and ``frozenset`` (a protocol-2 pickle
spells a set as a call of ``__builtin__.set``). ``copy_reg._reconstructor``, which protocol-2
pickles use for class instances, is refused too: a refs file holds no instances.

Python 2 byte strings are decoded as latin-1, which maps every byte to one character and so
never fails (the refer files' strings are ASCII in practice).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from evfbench.errors import EvfbenchError

_SAFE_GLOBALS = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # Python 2 spelling, as written by the original tools
    ("__builtin__", "frozenset"): frozenset,
}

REF_FIELDS = ("ref_id", "ann_id", "image_id", "split", "sent_ids", "sentences")
_FIX = ("this is not a refer refs file; re-download it "
        "(`python -m evfbench.prep <dataset> --data-root DIR` checks a download)")


class UnsafePickleError(EvfbenchError, pickle.UnpicklingError):
    """A pickle that asks for a global beyond plain containers: refused before anything runs."""


class RefsFormatError(EvfbenchError):
    """A refs file that loads but does not have the refer schema."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path}: the pickle tries to load '{module}.{name}', which a refs file never needs; "
                f"refused without running it.\n  fix: {_FIX}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: the pickle uses a persistent id ({pid!r}); refused.\n  fix: {_FIX}")


def safe_load(path: Path) -> Any:
    """Unpickle ``path`` admitting only plain containers and scalars (Python 2 strings as latin-1)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as err:
            raise RefsFormatError(
                f"{path}: not a readable pickle ({err}); it may be truncated.\n  fix: {_FIX}"
            ) from err


def validate_refs(refs: Any, path: Path) -> list[dict]:
    """Check the refer schema: a list of refs, each with :data:`REF_FIELDS` and sentences with text."""
    if not isinstance(refs, list):
        raise RefsFormatError(f"{path}: holds a {type(refs).__name__}, not a list of refs.\n  fix: {_FIX}")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise RefsFormatError(f"{path}: ref #{i} is a {type(ref).__name__}, not a dict.\n  fix: {_FIX}")
        for key in REF_FIELDS:
            if key not in ref:
                raise RefsFormatError(f"{path}: ref #{i} lacks the field '{key}'.\n  fix: {_FIX}")
        if not isinstance(ref["sentences"], list):
            raise RefsFormatError(f"{path}: ref #{i} field 'sentences' is not a list.\n  fix: {_FIX}")
        for j, sent in enumerate(ref["sentences"]):
            if not isinstance(sent, dict) or "sent_id" not in sent:
                raise RefsFormatError(f"{path}: ref #{i} sentence #{j} lacks the field 'sent_id'.\n  fix: {_FIX}")
            if "sent" not in sent and "raw" not in sent:
                raise RefsFormatError(
                    f"{path}: ref #{i} sentence #{j} has neither 'sent' nor 'raw' text.\n  fix: {_FIX}"
                )
    return refs


def load_refs(path: Path) -> list[dict]:
    """The refs of a refer ``refs(<split_by>).p`` file, loaded safely and schema-checked."""
    path = Path(path)
    return validate_refs(safe_load(path), path)
