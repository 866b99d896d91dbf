"""Wikipedia-500K raw variant: ``trn.raw.json.gz``, ``tst.raw.json.gz`` (LF JSON lines) and ``Yf.txt`` label names."""

from __future__ import annotations

from pathlib import Path

from dexml_hf.data._utils import atomic_directory, missing_file
from dexml_hf.data.dataset import XMCDataset
from dexml_hf.data.formats._common import SPLIT_STEMS, first_existing, one_line, read_names, require
from dexml_hf.data.formats._jsonl import read_json_lines, write_json_lines
from dexml_hf.data.registry import register_format

__all__ = ["read_wiki500k", "write_wiki500k"]


def read_wiki500k(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """``trn.raw.json.gz``, ``tst.raw.json.gz`` and ``Yf.txt`` (``uid->name`` a line; trailing blank lines ignored)."""
    folder = Path(folder)
    labels = read_names(require(folder, ["Yf.txt"], "label names (Yf.txt)"))
    queries, matrices = {}, {}
    for split, stem in SPLIT_STEMS.items():
        names = [f"{stem}.raw.json.gz", f"{stem}.raw.json"]
        path = first_existing(folder, names)
        if path is None:
            if split != "validation":
                raise missing_file(folder, names, f"{split} split")
            continue
        queries[split], matrices[split] = read_json_lines(path, ("title", "target_ind"), len(labels))
    return XMCDataset(queries, labels, matrices, family=family or "wikipedia", name=name or folder.name)


def write_wiki500k(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    """Label uids and names, query texts and labels (label ``content`` and filter pairs are not part of it)."""
    with atomic_directory(folder, overwrite, fmt="wiki500k") as tmp:
        with open(tmp / "Yf.txt", "w", encoding="utf-8") as out:
            for uid, title in zip(ds.labels["uid"], ds.labels["title"]):
                out.write(f"{uid}->{one_line(title)}\n")
        for split in ds.splits:
            write_json_lines(tmp / f"{SPLIT_STEMS[split]}.raw.json.gz", ds.queries[split], ds.label_matrices[split])


def is_wiki500k(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "Yf.txt").is_file()
        and first_existing(path, ["trn.raw.json.gz", "trn.raw.json"]) is not None
    )


register_format("wiki500k", read_wiki500k, write_wiki500k, is_wiki500k, "trn/tst.raw.json.gz + Yf.txt names")
