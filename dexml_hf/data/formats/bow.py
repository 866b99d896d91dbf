"""Legacy BoW ``train.txt`` / ``test.txt``: header ``N D L``, lines ``l1,l2 f:v f:v`` (features validated, dropped)."""

from __future__ import annotations

from pathlib import Path

from dexml_hf.data._utils import atomic_directory, data_error, parse_float, parse_int
from dexml_hf.data.dataset import XMCDataset
from dexml_hf.data.formats._labels_text import read_label_files, write_label_lines
from dexml_hf.data.registry import register_format

__all__ = ["read_bow", "write_bow"]

BOW_NAMES = {"train": "train.txt", "test": "test.txt", "validation": "val.txt"}


def _parse_bow_line(text, number, header, path):
    _, dim, _ = header
    label_part, _, feature_part = text.partition(" ")
    if ":" in label_part:  # no labels: the line starts with features
        label_part, feature_part = "", text
    for token in feature_part.split():
        f, sep, v = token.partition(":")
        if not sep:
            raise data_error(path, number, "feature", f"expected 'f:v', got {token!r}")
        fid = parse_int(f, path, number, "feature")
        if not 0 <= fid < dim:
            raise data_error(path, number, "feature", f"feature id {fid} out of range [0, {dim})")
        parse_float(v, path, number, "feature value")
    return [(parse_int(lab, path, number, "label"), 1.0) for lab in label_part.split(",") if lab.strip()]


def read_bow(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """Legacy BoW ``train.txt`` / ``test.txt`` (header ``N D L``; lines ``l1,l2 f:v ...``); labels only."""
    return read_label_files(Path(folder), BOW_NAMES, ("N", "D", "L"), _parse_bow_line, name, family)


def write_bow(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    """Labels only, no features (``D = 0``); relevance is not part of the format."""
    with atomic_directory(folder, overwrite, fmt="bow") as tmp:
        for split in ds.splits:
            m = ds.label_matrices[split]
            write_label_lines(
                tmp / BOW_NAMES[split], f"{m.shape[0]} 0 {m.shape[1]}", m, lambda ids, _: ",".join(map(str, ids))
            )


def is_bow(path: Path) -> bool:
    return path.is_dir() and (path / "train.txt").is_file()


register_format("bow", read_bow, write_bow, is_bow, "train/test.txt: header 'N D L', lines 'l1,l2 f:v'")
