"""Sparse label text (``trn_X_Y.txt`` / ``tst_X_Y.txt``): header ``N L``, then a line per point ``idx:val idx:val``.

Labels and relevance only: queries get empty titles and each label's ``uid``/``title`` is its id as a string,
unless a ``Yf.txt`` (``uid->name`` a line) next to the files supplies real names.
"""

from __future__ import annotations

from pathlib import Path

from dexml_hf.data._utils import atomic_directory, data_error, parse_float, parse_int
from dexml_hf.data.dataset import XMCDataset
from dexml_hf.data.formats._common import SPLIT_STEMS
from dexml_hf.data.formats._labels_text import read_label_files, write_label_lines
from dexml_hf.data.registry import register_format

__all__ = ["read_sparse", "write_sparse"]


def _parse_sparse_line(text, number, header, path):
    out = []
    for token in text.split():
        idx, sep, val = token.partition(":")
        if not sep:
            raise data_error(path, number, "label", f"expected 'idx:val', got {token!r}")
        value = parse_float(val, path, number, "value")
        if value < 0:
            raise data_error(path, number, "value", f"relevance {value} is not a finite number >= 0")
        out.append((parse_int(idx, path, number, "label"), value))
    return out


def read_sparse(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """``trn_X_Y.txt`` / ``tst_X_Y.txt`` (header ``N L``; lines ``idx:val ...``); labels only, no texts."""
    names = {s: f"{stem}_X_Y.txt" for s, stem in SPLIT_STEMS.items()}
    return read_label_files(Path(folder), names, ("N", "L"), _parse_sparse_line, name, family)


def write_sparse(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    """Labels and relevance only (texts are not part of the format)."""
    with atomic_directory(folder, overwrite, fmt="sparse") as tmp:
        for split in ds.splits:
            m = ds.label_matrices[split]
            write_label_lines(
                tmp / f"{SPLIT_STEMS[split]}_X_Y.txt",
                f"{m.shape[0]} {m.shape[1]}",
                m,
                lambda ids, vals: " ".join(f"{i}:{v:.9g}" for i, v in zip(ids.tolist(), vals.tolist())),
            )


def is_sparse(path: Path) -> bool:
    return path.is_dir() and (path / "trn_X_Y.txt").is_file()


register_format("sparse", read_sparse, write_sparse, is_sparse, "trn/tst_X_Y.txt: header 'N L', lines 'idx:val'")
