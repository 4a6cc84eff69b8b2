"""ppft.common: the helpers of ppft's common module that programs built on
ppft (pathos among them) import: b_ and str_ (bytes/str conversion)."""
from __future__ import annotations

from typing import Union


def b_(string: Union[str, bytes]) -> bytes:
    """string as bytes (latin-1, as ppft encodes; bytes pass through)."""
    if isinstance(string, bytes):
        return string
    return string.encode("latin-1")


def str_(byte: Union[str, bytes]) -> str:
    """byte as str (latin-1, as ppft decodes; str passes through)."""
    if isinstance(byte, str):
        return byte
    return byte.decode("latin-1")
