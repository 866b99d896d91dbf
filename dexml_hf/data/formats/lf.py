"""LF raw layout (Extreme Classification Repository): ``lbl.json.gz`` + ``trn/tst[/val].json.gz`` + filter files.

Queries and labels are JSON lines ``{"uid", "title", "content"[, "target_ind", "target_rel"]}``; label id = line
index in ``lbl.json.gz``; optional ``filter_labels_{train,test}.txt`` hold ``query_idx label_idx`` pairs removed
from predictions at evaluation.
"""

from __future__ import annotations

from pathlib import Path

from dexml_hf.data._utils import atomic_directory, missing_file
from dexml_hf.data.dataset import XMCDataset
from dexml_hf.data.formats._common import SPLIT_STEMS, first_existing, require
from dexml_hf.data.formats._jsonl import read_filters, read_json_lines, write_filters, write_json_lines
from dexml_hf.data.registry import register_format

__all__ = ["read_lf", "write_lf"]


def read_lf(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """LF raw layout: ``lbl.json.gz`` + ``trn/tst[/val].json.gz`` + optional ``filter_labels_*.txt``."""
    folder = Path(folder)
    lbl = require(folder, ["lbl.json.gz", "lbl.json"], "label (lbl.json.gz)")
    labels, _ = read_json_lines(lbl, ("title",), None)
    queries, matrices, filters = {}, {}, {}
    for split, stem in SPLIT_STEMS.items():
        path = first_existing(folder, [f"{stem}.json.gz", f"{stem}.json"])
        if path is None:
            if split != "validation":
                raise missing_file(folder, [f"{stem}.json.gz", f"{stem}.json"], f"{split} split")
            continue
        queries[split], matrices[split] = read_json_lines(path, ("title", "target_ind"), len(labels))
        for fname in {f"filter_labels_{split}.txt", f"filter_labels_{stem}.txt"}:
            if (folder / fname).is_file():
                filters[split] = read_filters(folder / fname, len(queries[split]), len(labels))
    return XMCDataset(queries, labels, matrices, filters, family=family, name=name or folder.name)


def write_lf(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    """Every split, the labels and the filter pairs (nothing is lost)."""
    with atomic_directory(folder, overwrite, fmt="lf") as tmp:
        write_json_lines(tmp / "lbl.json.gz", ds.labels, None)
        for split in ds.splits:
            write_json_lines(tmp / f"{SPLIT_STEMS[split]}.json.gz", ds.queries[split], ds.label_matrices[split])
        for split, pairs in ds.filters.items():
            write_filters(tmp / f"filter_labels_{split}.txt", pairs)


def is_lf(path: Path) -> bool:
    return path.is_dir() and first_existing(path, ["lbl.json.gz", "lbl.json"]) is not None


register_format("lf", read_lf, write_lf, is_lf, "LF raw: lbl.json.gz, trn/tst[/val].json.gz, filter_labels_*.txt")
