"""The one dataset dispatcher: a local path in any registered format, ``"synthetic"``, or a Hub dataset id."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dexml_hf.data.dataset import XMCDataset
from dexml_hf.data.registry import check_kwargs, detect_format, get_format
from dexml_hf.errors import DataError, UsageError

__all__ = ["load_xmc_dataset", "read_xmc", "resolve_format"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def resolve_format(source: str | os.PathLike, format: str | None = None) -> str:  # noqa: A002
    """The format :func:`load_xmc_dataset` reads ``source`` as (the one rule, also used by ``convert``).

    An explicit ``format`` (not ``"auto"``) wins; else an existing local path is detected from its file names,
    ``"synthetic"`` is the generated dataset, and anything else is a Hub dataset id (format ``hub``).
    """
    if format not in (None, "auto"):
        get_format(format)  # unknown names raise UsageError
        return format
    path = Path(source).expanduser()
    if path.exists():
        return detect_format(path)
    if str(source) == "synthetic":
        return "synthetic"
    if not _HUB_ID.fullmatch(str(source)):
        raise DataError(f"{source}: no such file or folder (and not a Hub dataset id)")
    return "hub"


def load_xmc_dataset(
    source: str | os.PathLike,
    format: str | None = None,  # noqa: A002
    revision: str | None = None,
    token: str | None = None,
    **reader_kwargs,
) -> XMCDataset:
    """Load an XMC dataset from wherever it is: THE entry point for every command and the trainer.

    Args:
        source: a local folder or file in any registered format (LF raw, wiki500k, PECOS, sparse, BoW, a tag
            CSV, a MovieLens folder, a Hub-layout folder), ``"synthetic"`` (the generated offline dataset), or a
            Hub dataset id (``user/eurlex-4k``) in the Hub layout (or mapped with ``columns=``).
        format: a registered format name; ``None`` / ``"auto"`` detects it (see :func:`resolve_format`).
        revision: branch, tag or commit of a Hub dataset (refused for other sources: it would be ignored).
        token: Hub token for a private dataset (not used for local files).
        reader_kwargs: the format reader's own options (``name``, ``family``; csv: ``seed``, ``test_fraction``;
            movielens: ``max_titles``, ...; hub: ``columns``, ``cache_dir``, ...). An option the reader does not
            take is refused with a :class:`~dexml_hf.errors.UsageError` naming the format and the option.

    Raises:
        DataError: a missing or malformed file (the message names the file, line and field where there is one).
        UsageError: an unknown format or an option the format does not take.
    """
    fmt = resolve_format(source, format)
    spec = get_format(fmt)
    if fmt == "hub":
        check_kwargs(spec, reader_kwargs)
        return spec.reader(str(source), revision=revision, token=token, **reader_kwargs)
    if revision is not None:
        raise UsageError(f"revision={revision!r} applies to Hub datasets; {source} is read as format {fmt!r}")
    if fmt != "synthetic" and not Path(source).expanduser().exists():
        raise DataError(f"{source}: no such file or folder (format {fmt!r} reads local files)")
    check_kwargs(spec, reader_kwargs)
    return spec.reader(Path(source).expanduser() if fmt != "synthetic" else str(source), **reader_kwargs)


def read_xmc(src: str | os.PathLike, format: str = "auto", **kwargs) -> XMCDataset:  # noqa: A002
    """Alias of :func:`load_xmc_dataset` (kept for existing callers): same dispatcher, same errors."""
    return load_xmc_dataset(src, format=format, **kwargs)
