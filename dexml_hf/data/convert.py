"""``convert_dataset``: read any format, write any writable one, atomically and without clobbering.

The order is what makes it safe: the destination is checked first (before the possibly long read of the source),
then the source is read and validated completely, then the output is written into a marked temp folder next to
the destination and renamed at the end. ``overwrite`` replaces only a folder this package wrote (it carries
``.dexml_hf_dataset.json``); ``.``, ``/``, the home folder and any folder holding the source are always refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from dexml_hf.data._utils import check_destination
from dexml_hf.data.dataset import XMCDataset
from dexml_hf.data.loading import load_xmc_dataset, resolve_format
from dexml_hf.data.registry import get_format
from dexml_hf.errors import UsageError

__all__ = ["convert_dataset"]


def convert_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    format: str = "auto",  # noqa: A002
    output_format: str = "hub",
    overwrite: bool = False,
    revision: str | None = None,
    token: str | None = None,
    **reader_kwargs,
) -> XMCDataset:
    """Convert ``src`` (any format :func:`load_xmc_dataset` reads, a Hub id included) into ``dst``; returns the dataset.

    Raises :class:`~dexml_hf.errors.UsageError` for a refused destination, an unknown or read-only output format,
    or an option the source format does not take, and :class:`~dexml_hf.errors.DataError` for bad input; in every
    case ``dst`` is left as it was.
    """
    out_spec = get_format(output_format)
    if out_spec.writer is None:
        raise UsageError(f"output format {output_format!r} can be read but not written")
    fmt = resolve_format(src, format)
    local_src = [src] if fmt not in ("hub", "synthetic") or Path(src).expanduser().exists() else []
    check_destination(dst, overwrite, sources=local_src)
    ds = load_xmc_dataset(src, format=fmt, revision=revision, token=token, **reader_kwargs)
    out_spec.writer(ds, Path(dst).expanduser(), overwrite=overwrite)
    return ds
