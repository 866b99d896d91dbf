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
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from dexml_hf.data._utils import (
    atomic_directory,
    csr_from_lists,
    csr_to_list_arrays,
    data_error,
    list_array_parts,
)
from dexml_hf.data.dataset import SPLITS, XMCDataset, index_strings, text_table
from dexml_hf.data.registry import register_format
from dexml_hf.errors import DataError

__all__ = ["load_hub_dataset", "push_to_hub", "save_to_folder", "validate_folder"]

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


def _check_writable(ds: XMCDataset) -> None:
    """``datasets`` cannot load a config split with no rows: refuse up front rather than write an unloadable repo."""
    empty = [s for s in ds.splits if ds.num_queries(s) == 0]
    if empty:
        raise DataError(
            f"dataset {ds.name!r}: split(s) {', '.join(map(repr, empty))} have no queries; the Hub layout cannot "
            "store an empty split (datasets refuses to load it): drop the split or give it queries"
        )
    if ds.num_labels == 0:
        raise DataError(f"dataset {ds.name!r} has no labels; the Hub layout needs at least one")


def save_to_folder(ds: XMCDataset, path, overwrite: bool = False) -> None:
    """Write the Hub layout into a local folder (atomically: marked temp folder, then rename)."""
    _check_writable(ds)
    meta = _metadata(ds)
    with atomic_directory(path, overwrite, fmt="hub") as tmp:
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

    _check_writable(ds)

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
        if not path.is_file():
            return {}
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HFValidationError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            path = Path(hf_hub_download(source, METADATA_FILE, repo_type="dataset", revision=revision, token=token))
        except EntryNotFoundError:
            return {}
        except RevisionNotFoundError:
            raise DataError(f"{source}: the dataset repo has no revision {revision!r}") from None
        except RepositoryNotFoundError:
            raise DataError(
                f"{source}: not a local file or folder, and no such dataset repo on the Hub (or no access to it)"
            ) from None
        except HFValidationError as err:
            raise DataError(f"{source}: not a local file or folder, nor a valid Hub dataset id ({err})") from None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise data_error(f"{source}: {METADATA_FILE}", None, None, f"not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise data_error(f"{source}: {METADATA_FILE}", None, None, "expected a JSON object")
    return meta


def _shards_complete(folder: Path, config: str, split: str) -> str | None:
    """What is missing of ``config/split-*.parquet`` (``None``: every shard ``i-of-N`` is there)."""
    files = sorted((folder / config).glob(f"{split}-*.parquet")) if (folder / config).is_dir() else []
    if not files:
        return f"{config}/{split}-*.parquet"
    totals = set()
    for file in files:
        match = re.fullmatch(rf"{re.escape(split)}-(\d+)-of-(\d+)\.parquet", file.name)
        if match:
            totals.add(int(match.group(2)))
    for total in totals:
        missing = [
            i for i in range(total) if not (folder / config / f"{split}-{i:05d}-of-{total:05d}.parquet").is_file()
        ]
        if missing:
            return f"{config}/{split}-{missing[0]:05d}-of-{total:05d}.parquet"
    return None


def validate_folder(folder: str | os.PathLike) -> dict:
    """Check a local Hub-layout folder before ``datasets`` reads it; returns its ``xmc.json`` (``{}`` if none).

    With ``xmc.json`` (a folder this package wrote) every config and split it announces must have its parquet
    files (all shards) and ``README.md`` its ``configs:``; a missing piece raises :class:`DataError` naming it.
    """
    folder = Path(folder)
    meta = _read_metadata(str(folder), None, None)
    if not meta:
        return meta
    splits = meta.get("splits")
    if not isinstance(splits, list) or not splits or not all(isinstance(x, str) for x in splits):
        raise data_error(folder / METADATA_FILE, None, "splits", f"expected a list of split names, got {splits!r}")
    needed = [("queries", split) for split in splits] + [("labels", "train")]
    if meta.get("has_filters"):
        # a filters split exists only for query splits that have pairs: at least one must be there
        if not any(_shards_complete(folder, "filters", s) is None for s in splits):
            raise DataError(f"{folder}: missing filters/*.parquet (xmc.json says the dataset has filter pairs)")
    for config, split in needed:
        missing = _shards_complete(folder, config, split)
        if missing is not None:
            what = "labels/ config" if config == "labels" else f"{config!r} split {split!r}"
            raise DataError(f"{folder}: missing {missing} (the {what} of this Hub-layout dataset)")
    readme = folder / "README.md"
    if not readme.is_file():
        raise DataError(f"{folder}: missing README.md (its YAML 'configs:' tell datasets where each config is)")
    text = readme.read_text(encoding="utf-8", errors="replace")
    for config in ("queries", "labels"):
        if f"config_name: {config}" not in text:
            raise data_error(readme, None, "configs", f"no config_name: {config} (the {config}/ config)")
    return meta


def _local_cache_dir(folder: str) -> str:
    """A datasets cache of its own for each local folder: datasets keys a local folder's cache by its base name and
    the files' mtimes only, so two folders of the same name written in the same second would share one cache."""
    import hashlib

    key = hashlib.sha256(str(Path(folder).resolve()).encode("utf-8")).hexdigest()[:16]
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "dexml_hf_local" / key)


def _load(source: str, config: str | None, local: bool, common: dict):
    """``datasets.load_dataset`` with a missing repo named (a wrong id is a user error, not a traceback)."""
    try:
        return datasets.load_dataset(source, config, **common)
    except datasets.exceptions.DatasetNotFoundError as err:
        where = "local folder" if local else "dataset repo on the Hub"
        raise DataError(f"{source}: no such {where} ({err})") from None
    except FileNotFoundError as err:
        raise DataError(f"{source}: {err}") from None


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
        raise DataError(f"{where}: no 'title' or 'content' column (columns: {table.column_names}); pass columns=")
    arrow = table.with_format("arrow")[:]
    return text_table(
        uid=arrow["uid"] if "uid" in present else index_strings(n),
        title=arrow["title"] if "title" in present else None,
        content=arrow["content"] if "content" in present else None,
        n=n,
    )


def load_hub_dataset(
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
    load_kwargs: dict | None = None,
) -> XMCDataset:
    """Load an XMC dataset from a Hub repo id or a local folder in the Hub layout (``load_dataset`` underneath).

    Usually called through :func:`dexml_hf.data.load_xmc_dataset`, which also reads every other format.

    Args:
        path: a dataset repo id (``user/eurlex-4k``) or a local folder with the same files.
        revision: a branch, tag or commit of the repo.
        columns: our column name -> the source's, for existing datasets, e.g.
            ``{"label_ids": "target_ind", "label_rel": "target_rel", "title": "text"}``.
        name, family: override the metadata (family defaults to the metadata's, else inferred from the name).
        num_labels: needed only when there is neither a labels config nor metadata (else max id + 1).
        queries_config, labels_config, filters_config: config names; ``None`` skips labels/filters
            (label texts then become the ids) or, for queries, loads the repo's default config.
        cache_dir, token: as ``datasets.load_dataset``; ``load_kwargs``: any other ``load_dataset`` argument.
    """
    source = str(path)
    local = Path(source).is_dir()
    meta = validate_folder(source) if local else _read_metadata(source, revision, token)
    columns = {**(columns or {})}
    if local and cache_dir is None:
        cache_dir = _local_cache_dir(source)
    common = dict(revision=revision, cache_dir=cache_dir, token=token, **(load_kwargs or {}))

    loaded = _load(source, queries_config, local, common)
    query_tables: dict[str, datasets.Dataset] = {}
    for split, table in loaded.items():
        query_tables[_SPLIT_ALIASES.get(split, split)] = _rename(table, columns)

    labels = None
    if labels_config is not None:
        try:
            label_dict = _load(source, labels_config, local, common)
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
            raise DataError(
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
                raise DataError(
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
            raise DataError(
                f"{source} split {split!r}, row {row}, field 'label_ids': label id {ids[bad]} out of range [0, {total})"
            )
        matrices[split] = csr_from_lists(offsets, ids, rel, total)
    if labels is None:
        labels = text_table(uid=index_strings(total), title=index_strings(total))

    filters = {}
    if filters_config is not None and (meta.get("has_filters", True) if meta else True):
        try:
            filter_dict = _load(source, filters_config, local, common)
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


def _is_hub_folder(path: Path) -> bool:
    """This package's layout (``xmc.json`` or ``queries/``) or any parquet folder ``datasets`` can load."""
    if not path.is_dir():
        return False
    if (path / METADATA_FILE).is_file() or (path / "queries").is_dir():
        return True
    return any(path.glob("*.parquet")) or any(path.glob("*/*.parquet"))


register_format("hub", load_hub_dataset, save_to_folder, _is_hub_folder, "the Hub layout (parquet configs + xmc.json)")
