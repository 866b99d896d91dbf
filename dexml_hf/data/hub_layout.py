"""The Hub layout of an XMC dataset repo, and ``push_to_hub`` / ``load_xmc_dataset`` built on ``datasets``.

A repo (or a local folder — the same files, read the same way) holds three ``datasets`` configs
and a small metadata file::

    README.md                               YAML ``configs:`` listing the three configs below
    xmc.json                                {"format": "dexml_hf.xmc", "version": 1, "name": ...,
                                             "family": "generic"|"amazon"|"wikipedia",
                                             "num_labels": L, "splits": [...]}
    queries/{split}-00000-of-0000N.parquet  config ``queries``, splits train / test [/ validation]:
                                            uid: string, title: string, content: string,
                                            label_ids: list<int64> (label row indices),
                                            label_rel: list<float32> (relevance, same length)
    labels/train-00000-of-0000N.parquet     config ``labels``, split ``train``: uid, title, content
                                            (row i = label id i; content = alternative names)
    filters/{split}-00000-of-0000N.parquet  config ``filters`` (only if any): query_idx: int64,
                                            label_idx: int64 (pairs removed from predictions)

This is exactly what ``datasets``' ``push_to_hub(config_name=...)`` writes, so the Hub viewer and
``load_dataset(repo, "queries")`` work on it directly. Loading goes through ``datasets.load_dataset``,
so the second load is served from the Arrow cache (memory-mapped), and the label matrices are built
from the ``label_ids`` list offsets without a Python loop. Details: ``docs/hub_layout.md``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from dexml_hf.data._utils import atomic_directory, csr_from_lists, csr_to_list_arrays, list_array_parts
from dexml_hf.data.dataset import SPLITS, XMCDataset, index_strings, text_table

METADATA_FILE = "xmc.json"
LAYOUT_VERSION = 1
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "tst": "test", "trn": "train"}
_SHARD_BYTES = 500 << 20


def _metadata(ds: XMCDataset) -> dict:
    return {
        "format": "dexml_hf.xmc",
        "version": LAYOUT_VERSION,
        "name": ds.name,
        "family": ds.family,
        "num_labels": ds.num_labels,
        "splits": ds.splits,
        "has_filters": bool(ds.filters),
    }


def _queries_with_labels(ds: XMCDataset, split: str) -> datasets.Dataset:
    table = ds.queries[split].select_columns(["uid", "title", "content"]).with_format("arrow")[:]
    ids, rel = csr_to_list_arrays(ds.label_matrices[split])
    table = pa.table(
        {"uid": table["uid"], "title": table["title"], "content": table["content"], "label_ids": ids, "label_rel": rel}
    )
    return datasets.Dataset(table)


def _config_tables(ds: XMCDataset) -> dict[str, dict[str, datasets.Dataset]]:
    configs = {
        "queries": {s: _queries_with_labels(ds, s) for s in ds.splits},
        "labels": {"train": ds.labels.select_columns(["uid", "title", "content"])},
    }
    if ds.filters:
        configs["filters"] = {
            s: datasets.Dataset(pa.table({"query_idx": pairs[:, 0], "label_idx": pairs[:, 1]}))
            for s, pairs in ds.filters.items()
        }
    return configs


def _readme(configs: dict[str, dict[str, list[str]]], meta: dict) -> str:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
    lines += ["tags:", "- extreme-multi-label-classification", "- dexml_hf", "---", ""]
    lines += [
        f"# {meta['name'] or 'XMC dataset'}",
        "",
        f"An extreme multi-label dataset in the `dexml_hf` Hub layout: {meta['num_labels']} labels, "
        f"propensity family `{meta['family']}`. Load it with `dexml_hf.load_xmc_dataset(...)`.",
        "",
    ]
    return "\n".join(lines)


def save_to_folder(ds: XMCDataset, path, overwrite: bool = False) -> None:
    """Write the Hub layout into a local folder (atomically: temp folder, then rename)."""
    meta = _metadata(ds)
    with atomic_directory(path, overwrite) as tmp:
        written: dict[str, dict[str, list[str]]] = {}
        for config, splits in _config_tables(ds).items():
            (tmp / config).mkdir()
            written[config] = {}
            for split, table in splits.items():
                shards = max(1, math.ceil(table.data.nbytes / _SHARD_BYTES))
                written[config][split] = []
                for index in range(shards):
                    name = f"{split}-{index:05d}-of-{shards:05d}.parquet"
                    table.shard(shards, index, contiguous=True).to_parquet(str(tmp / config / name))
                    written[config][split].append(name)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(written, meta), encoding="utf-8")


def push_to_hub(
    ds: XMCDataset,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> None:
    """Push the Hub layout: ``DatasetDict.push_to_hub(config_name=...)`` per config, then ``xmc.json``."""
    from huggingface_hub import HfApi

    for config, splits in _config_tables(ds).items():
        datasets.DatasetDict(splits).push_to_hub(
            repo_id,
            config_name=config,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message or f"Upload XMC config {config}",
        )
    HfApi(token=token).upload_file(
        path_or_fileobj=(json.dumps(_metadata(ds), indent=1) + "\n").encode(),
        path_in_repo=METADATA_FILE,
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        commit_message=commit_message or "Upload XMC metadata",
    )


def _read_metadata(source: str, revision: str | None, token: str | None) -> dict:
    if Path(source).is_dir():
        path = Path(source) / METADATA_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(source, METADATA_FILE, repo_type="dataset", revision=revision, token=token)
    except EntryNotFoundError:
        return {}
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _rename(table: datasets.Dataset, columns: dict[str, str]) -> datasets.Dataset:
    mapping = {src: ours for ours, src in columns.items() if src in table.column_names and src != ours}
    return table.rename_columns(mapping) if mapping else table


def _text_part(table: datasets.Dataset, where: str) -> datasets.Dataset:
    """``uid, title, content`` view of a loaded table; missing columns become '' (uid: the row index)."""
    n = len(table)
    present = set(table.column_names)
    if {"uid", "title", "content"} <= present and all(
        table.features[c] == datasets.Value("string") for c in ("uid", "title", "content")
    ):
        return table.select_columns(["uid", "title", "content"])
    if "title" not in present and "content" not in present:
        raise ValueError(f"{where}: no 'title' or 'content' column (columns: {table.column_names}); pass columns=")
    arrow = table.with_format("arrow")[:]
    return text_table(
        uid=arrow["uid"] if "uid" in present else index_strings(n),
        title=arrow["title"] if "title" in present else None,
        content=arrow["content"] if "content" in present else None,
        n=n,
    )


def load_xmc_dataset(
    path: str | os.PathLike,
    revision: str | None = None,
    columns: dict[str, str] | None = None,
    name: str | None = None,
    family: str | None = None,
    num_labels: int | None = None,
    queries_config: str | None = "queries",
    labels_config: str | None = "labels",
    filters_config: str | None = "filters",
    cache_dir: str | None = None,
    token: str | None = None,
    **load_kwargs,
) -> XMCDataset:
    """Load an XMC dataset from a Hub repo id or a local folder in the Hub layout (``load_dataset`` underneath).

    Args:
        path: a dataset repo id (``user/eurlex-4k``) or a local folder with the same files.
        revision: a branch, tag or commit of the repo.
        columns: our column name -> the source's, for existing datasets, e.g.
            ``{"label_ids": "target_ind", "label_rel": "target_rel", "title": "text"}``.
        name, family: override the metadata (family defaults to the metadata's, else inferred from the name).
        num_labels: needed only when there is neither a labels config nor metadata (else max id + 1).
        queries_config, labels_config, filters_config: config names; ``None`` skips labels/filters
            (label texts then become the ids) or, for queries, loads the repo's default config.
    """
    source = str(path)
    meta = _read_metadata(source, revision, token)
    columns = {**(columns or {})}
    common = dict(revision=revision, cache_dir=cache_dir, token=token, **load_kwargs)

    loaded = datasets.load_dataset(source, queries_config, **common)
    query_tables: dict[str, datasets.Dataset] = {}
    for split, table in loaded.items():
        query_tables[_SPLIT_ALIASES.get(split, split)] = _rename(table, columns)

    labels = None
    if labels_config is not None:
        try:
            label_dict = datasets.load_dataset(source, labels_config, **common)
        except ValueError as err:
            if meta or labels_config != "labels" or "labels" not in str(err):
                raise
            label_dict = None  # no labels config in a foreign repo: placeholder names below
        if label_dict is not None:
            split = "train" if "train" in label_dict else next(iter(label_dict))
            labels = _text_part(_rename(label_dict[split], columns), f"{source} config {labels_config!r}")

    if labels is not None:
        total = len(labels)
    elif meta.get("num_labels") is not None or num_labels is not None:
        total = int(num_labels if num_labels is not None else meta["num_labels"])
    else:
        total = None

    matrices, queries = {}, {}
    parts = {}
    for split, table in query_tables.items():
        if "label_ids" not in table.column_names:
            raise ValueError(
                f"{source} config {queries_config!r} split {split!r}: no 'label_ids' column "
                f"(columns: {table.column_names}); map yours with columns={{'label_ids': ...}}"
            )
        arrow = table.with_format("arrow")[:]
        offsets, ids = list_array_parts(arrow["label_ids"])
        rel = None
        if "label_rel" in table.column_names:
            rel_offsets, rel = list_array_parts(arrow["label_rel"])
            if not np.array_equal(rel_offsets, offsets):
                row = int(np.flatnonzero(rel_offsets != offsets)[0]) - 1
                raise ValueError(
                    f"{source} split {split!r}, row {row}, field 'label_rel': length differs from label_ids"
                )
        parts[split] = (offsets, ids, rel)
        queries[split] = _text_part(table, f"{source} config {queries_config!r} split {split!r}")
    if total is None:
        total = int(max((p[1].max() + 1 if len(p[1]) else 0) for p in parts.values()))
    for split, (offsets, ids, rel) in parts.items():
        if len(ids) and (ids.min() < 0 or ids.max() >= total):
            bad = int(np.flatnonzero((ids < 0) | (ids >= total))[0])
            row = int(np.searchsorted(offsets, bad, side="right") - 1)
            raise ValueError(
                f"{source} split {split!r}, row {row}, field 'label_ids': label id {ids[bad]} out of range [0, {total})"
            )
        matrices[split] = csr_from_lists(offsets, ids, rel, total)
    if labels is None:
        labels = text_table(uid=index_strings(total), title=index_strings(total))

    filters = {}
    if filters_config is not None and (meta.get("has_filters", True) if meta else True):
        try:
            filter_dict = datasets.load_dataset(source, filters_config, **common)
        except ValueError as err:
            if filters_config not in str(err):
                raise
            filter_dict = {}
        for split, table in filter_dict.items():
            arrow = table.with_format("arrow")[:]
            filters[_SPLIT_ALIASES.get(split, split)] = np.stack(
                [arrow["query_idx"].to_numpy(), arrow["label_idx"].to_numpy()], axis=1
            )
    ordered = [s for s in SPLITS if s in queries] + [s for s in queries if s not in SPLITS]
    return XMCDataset(
        {s: queries[s] for s in ordered},
        labels,
        {s: matrices[s] for s in ordered},
        filters,
        family=family or meta.get("family"),
        name=name or meta.get("name") or Path(source).name,
    )
