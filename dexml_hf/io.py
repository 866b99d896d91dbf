"""Reading the package's own files (label indexes, retrieval memories, checkpoint state) without trusting them:
safetensors and JSON only, nothing unpickled, and a :class:`~dexml_hf.errors.DataError` naming the file when one
is missing or damaged."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dexml_hf.errors import DataError

__all__ = ["read_json", "read_safetensors"]


def read_safetensors(path: str | os.PathLike, framework: str = "pt") -> dict[str, Any]:
    """All tensors of a safetensors file (``framework`` "pt" or "numpy")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if framework == "numpy":
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise DataError(f"{path}: not a readable safetensors file ({err})") from err


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
