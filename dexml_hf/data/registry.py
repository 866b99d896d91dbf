"""One registry of the dataset formats: name -> reader, writer, detector.

A format module (``dexml_hf/data/formats/lf.py``, ``hub_layout.py``, ...) calls :func:`register_format` when it
is imported. This module imports none of them (the built-in ones are named by module path and imported on first
use), so it sits at the bottom of the import graph: ``dataset.py`` can look a writer up here without importing
``hub_layout.py``, which imports ``dataset.py`` (no cycle).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dexml_hf.errors import DataError, UsageError

__all__ = [
    "FORMATS",
    "FormatSpec",
    "available_formats",
    "check_kwargs",
    "detect_format",
    "get_format",
    "import_format_module",
    "register_format",
]


@dataclass(frozen=True)
class FormatSpec:
    """What the package knows about one format.

    Args:
        name: the format's name (``--format``).
        reader: ``reader(path, **kwargs) -> XMCDataset``; its keyword arguments are the only ones accepted.
        writer: ``writer(ds, path, overwrite=False) -> None`` (atomic, marker file), or ``None`` (read-only).
        detector: ``detector(path) -> bool``: whether a local file/folder is in this format (``None``: never guessed).
        description: one line for ``--help`` and error messages.
    """

    name: str
    reader: Callable[..., Any]
    writer: Callable[..., None] | None = None
    detector: Callable[[Path], bool] | None = None
    description: str = ""

    def reader_arguments(self) -> list[str]:
        """Keyword arguments the reader accepts (besides the path)."""
        params = list(inspect.signature(self.reader).parameters.values())[1:]
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# Built-in formats in detection order (the first whose detector accepts a path wins): module that registers each.
_BUILTIN: dict[str, str] = {
    "hub": "dexml_hf.data.hub_layout",
    "lf": "dexml_hf.data.formats.lf",
    "wiki500k": "dexml_hf.data.formats.wiki500k",
    "pecos": "dexml_hf.data.formats.pecos",
    "sparse": "dexml_hf.data.formats.sparse",
    "bow": "dexml_hf.data.formats.bow",
    "movielens": "dexml_hf.data.movielens",
    "csv": "dexml_hf.data.formats.csv",
    "synthetic": "dexml_hf.data.synthetic",
}
FORMATS: tuple[str, ...] = tuple(_BUILTIN)

_REGISTRY: dict[str, FormatSpec] = {}


def register_format(
    name: str,
    reader: Callable[..., Any],
    writer: Callable[..., None] | None = None,
    detector: Callable[[Path], bool] | None = None,
    description: str = "",
) -> FormatSpec:
    """Add (or replace) a format; built-in modules call this at import time, a user can add their own."""
    spec = FormatSpec(name, reader, writer, detector, description)
    _REGISTRY[name] = spec
    return spec


def available_formats() -> list[str]:
    """Built-in formats (detection order) then any registered by the user."""
    return [*_BUILTIN, *(n for n in _REGISTRY if n not in _BUILTIN)]


def import_format_module(name: str):
    """The module of a built-in format (imported on first use)."""
    return importlib.import_module(_BUILTIN[name])


def get_format(name: str) -> FormatSpec:
    """The spec of a format (imports its module on first use); unknown names raise :class:`UsageError`."""
    if name not in _REGISTRY and name in _BUILTIN:
        import_format_module(name)
    if name not in _REGISTRY:
        raise UsageError(f"unknown dataset format {name!r}; expected one of {', '.join(available_formats())}")
    return _REGISTRY[name]


def check_kwargs(spec: FormatSpec, kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments the format's reader does not take (naming the format and the argument)."""
    accepted = spec.reader_arguments()
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise UsageError(
            f"format {spec.name!r} does not take the argument(s) {', '.join(map(repr, unknown))} "
            f"(it takes: {', '.join(accepted) or 'none'})"
        )


def detect_format(src: str | os.PathLike) -> str:
    """The format of a local file or folder, from the files it holds (first matching detector)."""
    path = Path(src)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    for name in available_formats():
        spec = get_format(name)
        if spec.detector is not None and spec.detector(path):
            return name
    what = "file" if path.is_file() else "folder"
    raise DataError(
        f"{path}: no known XMC layout found in this {what} (formats: {', '.join(available_formats())}); "
        "pass format= / --format"
    )
