"""``dexml-hf index``: build a label index, or add, update and remove labels of a saved one without retraining.

    dexml-hf index build  --model out/ --dataset ../shared/data/eurlex57k --output out/label_index
    dexml-hf index build  --model out/ --labels labels.jsonl --output idx/
    dexml-hf index add    --model out/ --index out/label_index --labels new_labels.jsonl
    dexml-hf index update --model out/ --index out/label_index --labels changed.tsv
    dexml-hf index remove --index out/label_index --ids 3817,5102
    dexml-hf index build  --model out/ --dataset ../shared/data/eurlex57k --output idx/ \
        --approximate hnsw --target_recall 0.99 --ann_params M=32,efConstruction=200

``--labels``: a ``.jsonl`` file of ``{"id": ..., "text": ...}`` objects (``id`` optional for an index without ids),
a ``.tsv`` file of ``id<TAB>text`` lines, or any other file of one label text a line (no ids). The index is saved
in place (atomically) unless ``--output`` names another folder. A dual encoder embeds a label it never trained on,
so added labels are predicted at once; a retrieval memory keeps its columns aligned (a removed label never comes
back through the neighbour term, a new one has no neighbours until the memory is rebuilt with ``dexml-hf memory``).

``build --approximate hnsw|ivf|flat`` also builds an approximate index (faiss; saved in ``approximate/``) with
``--codes`` storage and ``--ann_params`` (``rerank``: candidates a result re-scored exactly, compressed codes
only); ``--target_recall`` tunes ``efSearch`` / ``nprobe`` (then the smallest ``rerank``) for recall@``--tune_k``
against exact search on tuning queries (``--dataset``: its validation split, else its test split; or
``--tune_queries``, one text a line) and stores the measured recall with the index. ``add``, ``update`` and ``remove``
keep a saved approximate index current (added labels are added to it, removals and updates rebuild it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dexml_hf.errors import DataError, UsageError
from dexml_hf.script_args import inference_dtype_field

__all__ = ["ACTIONS", "ANN_PARAMS", "IndexArguments", "build_parser", "main", "parse_ann_params", "read_label_file"]

HELP = "build a label index, or add / update / remove labels of one (no retraining)"
ACTIONS = ("build", "add", "update", "remove")
#: ``--ann_params`` keys (all positive integers); which apply depends on ``--approximate`` / ``--codes``
ANN_PARAMS = ("M", "efConstruction", "efSearch", "nlist", "nprobe", "pq_m", "pq_nbits", "rerank")


@dataclass
class IndexArguments:
    """Build a LabelIndex, or change the labels of a saved one."""

    model: str | None = field(
        default=None, metadata={"help": "the model that embeds the labels (path or Hub id); build, add, update"}
    )
    index: str | None = field(
        default=None, metadata={"help": "the saved LabelIndex to change (folder or Hub id); add, update, remove"}
    )
    output: str | None = field(
        default=None, metadata={"help": "folder to save into (build: required; else default: --index, in place)"}
    )
    labels: str | None = field(
        default=None, metadata={"help": "label file: .jsonl ({id, text}), .tsv (id<TAB>text) or one text a line"}
    )
    dataset: str | None = field(default=None, metadata={"help": "build: the labels of this XMC dataset instead"})
    dataset_format: str | None = field(default=None, metadata={"help": "format of a local dataset (default: detect)"})
    label_text_mode: str = field(default="title", metadata={"help": "build --dataset: label text of the dataset"})
    ids: str | None = field(default=None, metadata={"help": "remove: comma-separated label ids"})
    ids_file: str | None = field(default=None, metadata={"help": "remove: a file of label ids, one a line"})
    approximate: str | None = field(
        default=None,
        metadata={
            "help": "build: also an approximate index of this kind (default: exact search only)",
            "choices": ["hnsw", "ivf", "flat"],
        },
    )
    codes: str = field(
        default="flat",
        metadata={
            "help": "build --approximate: storage of the vectors (compressed ones are re-ranked exactly)",
            "choices": ["flat", "fp16", "sq8", "pq"],
        },
    )
    ann_params: str | None = field(
        default=None,
        metadata={"help": f"build --approximate: key=value,... of {', '.join(ANN_PARAMS)} (integers)"},
    )
    target_recall: float | None = field(
        default=None, metadata={"help": "build --approximate: tune efSearch / nprobe for this recall@tune_k"}
    )
    tune_k: int = field(default=100, metadata={"help": "build --target_recall: the k of the tuned recall@k"})
    tune_queries: str | None = field(
        default=None,
        metadata={
            "help": "build --target_recall: tuning query texts, one a line (default with --dataset: its "
            "validation split, else its test split)"
        },
    )
    tune_max_queries: int = field(
        default=1000, metadata={"help": "build --target_recall: at most this many tuning queries (seeded sample)"}
    )
    query_text_mode: str = field(
        default="title",
        metadata={"help": "build --dataset: query text of the tuning queries (title, content, title_content, ...)"},
    )
    batch_size: int = field(default=64, metadata={"help": "encoding batch size"})
    model_revision: str | None = field(default=None, metadata={"help": "model revision on the Hub"})
    dtype: str = inference_dtype_field()

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch_size must be positive, got {self.batch_size}")
        if self.approximate is None:
            given = [
                name
                for name, default in (("codes", "flat"), ("ann_params", None), ("target_recall", None))
                if getattr(self, name) != default
            ]
            if given:
                raise UsageError(f"--{given[0]} needs --approximate (hnsw, ivf or flat)")
        if self.target_recall is None:
            given = [
                name
                for name, default in (("tune_queries", None), ("tune_k", 100), ("tune_max_queries", 1000))
                if getattr(self, name) != default
            ]
            if given:
                raise UsageError(f"--{given[0]} needs --target_recall (it sets the tuning of the approximate index)")
        if self.target_recall is not None and not 0.0 < self.target_recall <= 1.0:
            raise UsageError(f"--target_recall must be in (0, 1], got {self.target_recall}")
        if self.tune_k < 1 or self.tune_max_queries < 1:
            raise UsageError("--tune_k and --tune_max_queries must be positive")


def build_parser():
    from dexml_hf.script_args import DEXMLArgumentParser

    parser = DEXMLArgumentParser([IndexArguments], prog="dexml-hf index", description=__doc__)
    parser.add_argument("action", choices=ACTIONS, help="build, add, update or remove")
    return parser


def read_label_file(path: str | Path) -> tuple[list[str], list | None]:
    """``(texts, ids or None)`` of a label file (see the module doc); a bad line is a ``DataError`` naming the file,
    its 1-based line (blank lines count) and the field. A ``.jsonl`` id is a string or an integer (not a bool, a
    float, a list or null): the index keys labels by it."""
    from dexml_hf.data._utils import data_error, iter_lines

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    texts, ids, numbers = [], [], []
    for number, line in iter_lines(path):
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except ValueError as err:
                raise data_error(path, number, None, f"not valid JSON ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise data_error(path, number, "text", 'expected an object with a string "text" (and an "id")')
            label_id = row.get("id")
            if "id" in row and (not isinstance(label_id, (str, int)) or isinstance(label_id, bool)):
                got = "null" if label_id is None else f"{type(label_id).__name__} {label_id!r}"
                raise data_error(path, number, "id", f"a label id is a string or an integer, got {got}")
            texts.append(row["text"])
            ids.append(label_id)
        elif path.suffix == ".tsv":
            label_id, tab, text = line.partition("\t")
            if not tab or not text.strip():
                raise data_error(path, number, None, "expected id<TAB>text")
            texts.append(text)
            ids.append(label_id)
        else:
            texts.append(line)
            ids.append(None)
        numbers.append(number)
    if not texts:
        raise DataError(f"{path}: no labels")
    given = [i is not None for i in ids]
    if any(given) and not all(given):
        line = numbers[given.index(False)]
        raise data_error(path, line, "id", 'every label needs an "id" when one has it')
    return texts, (ids if all(given) else None)


def parse_ann_params(text: str | None) -> dict[str, int]:
    """``"M=16,efSearch=64"`` as ``{"M": 16, "efSearch": 64}``; a bad key or value is a ``UsageError`` naming it."""
    params: dict[str, int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq:
            raise UsageError(f"--ann_params: {item.strip()!r} is not key=value")
        if key not in ANN_PARAMS:
            raise UsageError(f"--ann_params: unknown key {key!r} (allowed: {', '.join(ANN_PARAMS)})")
        if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
            raise UsageError(f"--ann_params: {key}={value!r} is not a positive integer")
        params[key] = int(value)
    return params


def _check_ann_params(args) -> dict[str, int]:
    """``--ann_params`` parsed and checked against what ``--approximate`` with ``--codes`` takes."""
    params = parse_ann_params(args.ann_params)
    if args.approximate:
        from dexml_hf.ann import _faiss, allowed_params

        try:
            _faiss()
        except ImportError as err:
            raise UsageError(f"--approximate: {err}") from None
        allowed = allowed_params(args.approximate, args.codes)
        wrong = sorted(set(params) - allowed)
        if wrong:
            raise UsageError(
                f"--ann_params: {wrong[0]} does not apply to --approximate {args.approximate} --codes {args.codes} "
                f"(it takes: {', '.join(sorted(allowed)) or 'none'})"
            )
    return params


def _tuning_texts(args, xmc) -> list[str]:
    """The query texts ``--target_recall`` is tuned on: ``--tune_queries`` lines or the dataset's validation (else
    test) split, a seeded sample of at most ``--tune_max_queries``."""
    import numpy as np

    if args.tune_queries is not None:
        path = Path(args.tune_queries)
        if not path.is_file():
            raise UsageError(f"--tune_queries {path}: file not found")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        where = str(path)
    elif xmc is not None:
        split = "validation" if "validation" in xmc.splits else "test"
        if split not in xmc.splits:
            raise UsageError(
                f"--target_recall: dataset {args.dataset} has no validation or test split: give --tune_queries"
            )
        texts = [t for t in xmc.query_texts(split, args.query_text_mode) if t.strip()]
        where = f"the {split} split of {args.dataset}"
    else:
        raise UsageError("--target_recall with --labels needs --tune_queries (a file of query texts, one a line)")
    if not texts:
        raise UsageError(f"--target_recall: no tuning queries in {where}")
    if len(texts) > args.tune_max_queries:
        keep = np.sort(np.random.default_rng(0).choice(len(texts), size=args.tune_max_queries, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def _build_approximate(args, model, index, xmc) -> None:
    """``index.build_approximate`` from the ``build`` options (tuned on query texts with ``--target_recall``)."""
    params = _check_ann_params(args)
    queries = None
    if args.target_recall is not None:
        texts = _tuning_texts(args, xmc)
        queries = index.encode_queries(model, texts, batch_size=args.batch_size, show_progress_bar=True)
    try:
        ann = index.build_approximate(
            args.approximate,
            codes=args.codes,
            target_recall=args.target_recall,
            tune_queries=queries,
            tune_k=args.tune_k,
            tune_max_queries=args.tune_max_queries,
            show_progress_bar=True,
            **params,
        )
    except ValueError as err:  # a parameter that does not fit this kind / codes / index (names it)
        raise UsageError(f"--approximate {args.approximate} --codes {args.codes}: {err}") from None
    shown = ", ".join(f"{k}={v}" for k, v in ann.params.items())
    if ann.recall is None:
        print(f"approximate index: {ann.kind}, codes {ann.codes} ({shown}); recall not measured (--target_recall)")
    else:
        r = ann.recall
        print(
            f"approximate index: {ann.kind}, codes {ann.codes} ({shown}); recall@{r['k']} {r['recall']:.4f} "
            f"(target {r['target_recall']}) on {r['n_queries']:,} tuning queries"
        )


def _coerce_ids(index, ids: list | None) -> list | None:
    """Ids from a text file are strings: make them integers when the index's ids (or positions) are integers."""
    if ids is None:
        return None
    if index.label_ids is None or (len(index) and isinstance(index.label_ids[0], int)):
        try:
            return [int(i) for i in ids]
        except (TypeError, ValueError):
            what = "label ids" if index.label_ids is not None else "labels (positions: it has no label ids)"
            raise UsageError(f"this index's {what} are integers; got {ids[0]!r}") from None
    return [str(i) for i in ids]


def main(argv: list[str]) -> int:
    from dexml_hf.factory import load_model
    from dexml_hf.index import LabelIndex

    args, extra = build_parser().parse(argv)
    action = extra.action
    if action == "build":
        if not args.model or not args.output or (args.labels is None) == (args.dataset is None):
            raise UsageError("index build needs --model, --output and one of --labels / --dataset")
        _check_ann_params(args)  # bad options fail before any model is loaded
        if args.target_recall is not None and args.tune_queries is None and args.dataset is None:
            raise UsageError("--target_recall with --labels needs --tune_queries (a file of query texts, one a line)")
        if args.query_text_mode != "title":
            from dexml_hf.data.dataset import QUERY_TEXT_MODES

            if args.target_recall is None or args.dataset is None or args.tune_queries is not None:
                raise UsageError("--query_text_mode is the text of --dataset tuning queries: give --target_recall")
            if args.query_text_mode not in QUERY_TEXT_MODES:
                expected = ", ".join(QUERY_TEXT_MODES)
                raise UsageError(f"--query_text_mode {args.query_text_mode!r}: expected one of {expected}")
        model = load_model(args.model, revision=args.model_revision, dtype=args.dtype)
        xmc = None
        if args.dataset:
            from dexml_hf.factory import load_dataset

            xmc = load_dataset(args.dataset, format=args.dataset_format)
            texts, ids = list(xmc.label_texts(args.label_text_mode)), list(xmc.labels["uid"])
        else:
            texts, ids = read_label_file(args.labels)
        index = LabelIndex.from_texts(model, texts, label_ids=ids, batch_size=args.batch_size, show_progress_bar=True)
        if args.approximate:
            _build_approximate(args, model, index, xmc)
        index.save(args.output)
        print(f"saved {args.output}: {len(index):,} labels, {index.dim} dims")
        return 0

    if args.approximate:
        raise UsageError(f"--approximate is an option of index build (index {action} keeps a saved one current)")
    if not args.index:
        raise UsageError(f"index {action} needs --index")
    output = args.output or args.index
    if args.output is None and not Path(args.index).is_dir():
        raise UsageError(f"--index {args.index} is not a local folder: give --output to save the changed index")
    index = LabelIndex.load(args.index)
    before = len(index)
    if action == "remove":
        if (args.ids is None) == (args.ids_file is None):
            raise UsageError("index remove needs one of --ids / --ids_file")
        if args.ids is not None:
            raw = [i.strip() for i in args.ids.split(",") if i.strip()]
        else:
            if not Path(args.ids_file).is_file():
                raise UsageError(f"--ids_file {args.ids_file}: file not found")
            raw = [
                line.strip() for line in Path(args.ids_file).read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        if not raw:
            raise UsageError("no label ids to remove")
        index.remove_labels(_coerce_ids(index, raw))
        summary = f"removed {before - len(index):,} labels"
    else:
        if not args.model or not args.labels:
            raise UsageError(f"index {action} needs --model and --labels")
        texts, ids = read_label_file(args.labels)
        model = load_model(args.model, revision=args.model_revision, dtype=args.dtype)
        ids = _coerce_ids(index, ids)
        if action == "add":
            index.add_labels(model, texts, ids, batch_size=args.batch_size, show_progress_bar=True)
            summary = f"added {len(index) - before:,} labels"
        else:
            if ids is None:
                raise UsageError(f"index update: {args.labels} must give the id of every label it changes")
            index.update_labels(model, texts, ids, batch_size=args.batch_size, show_progress_bar=True)
            summary = f"updated {len(texts):,} labels"
    index.save(output)
    print(f"{summary}; saved {output}: {len(index):,} labels")
    return 0
