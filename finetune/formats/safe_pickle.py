"""Loading data pickles (RefCOCO's `refs(unc).p`) without running code from them.

A pickle can name any importable callable and have it called while loading (`os.system`, ...).
`load_plain_pickle` only lets the opcodes that build plain data through: every global lookup is
refused except `set`/`frozenset`, so lists, dicts, tuples, strings, numbers and sets are all
that can come out."""
from __future__ import annotations

import builtins
import io
import pickle

from .errors import DataFormatError
from .files import display

_ALLOWED_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"),
                    ("__builtin__", "set"), ("__builtin__", "frozenset")}   # Python 2 pickles


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, f, name: str):
        # Python 2 `str` objects (the published RefCOCO pickles are Python 2 ones) decode as UTF-8
        super().__init__(f, encoding="utf-8", errors="strict")
        self._name = name

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return getattr(builtins, name)
        raise DataFormatError(
            f"{self._name}: refused to load the global '{module}.{name}': this pickle would import "
            f"or call code, and only plain data (lists, dicts, strings, numbers) is accepted")

    def persistent_load(self, pid):
        raise DataFormatError(f"{self._name}: refused a persistent id in the pickle (only plain data is accepted)")


def load_plain_pickle(path):
    name = display(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _PlainDataUnpickler(io.BytesIO(data), name).load()
    except DataFormatError:
        raise
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{name}: a string in the pickle is not UTF-8 ({e.reason})") from None
    except Exception as e:   # truncated or corrupt pickles raise many different types
        raise DataFormatError(f"{name}: not a readable pickle: {type(e).__name__}: {e}") from None
