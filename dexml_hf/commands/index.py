"""``dexml-hf index``: build a label index, or add, update and remove labels of a saved one without retraining.

    dexml-hf index build  --model out/ --dataset ../shared/data/eurlex57k --output out/label_index
    dexml-hf index build  --model out/ --labels labels.jsonl --output idx/
    dexml-hf index add    --model out/ --index out/label_index --labels new_labels.jsonl
    dexml-hf index update --model out/ --index out/label_index --labels changed.tsv
    dexml-hf index remove --index out/label_index --ids 3817,5102

``--labels``: a ``.jsonl`` file of ``{"id": ..., "text": ...}`` objects (``id`` optional for an index without ids),
a ``.tsv`` file of ``id<TAB>text`` lines, or any other file of one label text a line (no ids). The index is saved
in place (atomically) unless ``--output`` names another folder. A dual encoder embeds a label it never trained on,
so added labels are predicted at once; a retrieval memory keeps its columns aligned (a removed label never comes
back through the neighbour term, a new one has no neighbours until the memory is rebuilt with ``dexml-hf memory``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dexml_hf.errors import DataError, UsageError

__all__ = ["ACTIONS", "IndexArguments", "build_parser", "main", "read_label_file"]

HELP = "build a label index, or add / update / remove labels of one (no retraining)"
ACTIONS = ("build", "add", "update", "remove")


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
    batch_size: int = field(default=64, metadata={"help": "encoding batch size"})
    model_revision: str | None = field(default=None, metadata={"help": "model revision on the Hub"})

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch_size must be positive, got {self.batch_size}")


def build_parser():
    from dexml_hf.script_args import DEXMLArgumentParser

    parser = DEXMLArgumentParser([IndexArguments], prog="dexml-hf index", description=__doc__)
    parser.add_argument("action", choices=ACTIONS, help="build, add, update or remove")
    return parser


def read_label_file(path: str | Path) -> tuple[list[str], list | None]:
    """``(texts, ids or None)`` of a label file (see the module doc); a bad line is a ``DataError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    texts, ids = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except ValueError as err:
                    raise DataError(f"{where}: not valid JSON ({err})") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise DataError(f'{where}: expected an object with a string "text" (and an "id")')
                texts.append(row["text"])
                ids.append(row.get("id"))
            elif path.suffix == ".tsv":
                label_id, tab, text = line.partition("\t")
                if not tab or not text.strip():
                    raise DataError(f"{where}: expected id<TAB>text")
                texts.append(text)
                ids.append(label_id)
            else:
                texts.append(line)
                ids.append(None)
    if not texts:
        raise DataError(f"{path}: no labels")
    given = [i is not None for i in ids]
    if any(given) and not all(given):
        raise DataError(f'{path}: line {given.index(False) + 1}: every label needs an "id" when one has it')
    return texts, (ids if all(given) else None)


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
        model = load_model(args.model, revision=args.model_revision)
        if args.dataset:
            from dexml_hf.factory import load_dataset

            xmc = load_dataset(args.dataset, format=args.dataset_format)
            texts, ids = list(xmc.label_texts(args.label_text_mode)), list(xmc.labels["uid"])
        else:
            texts, ids = read_label_file(args.labels)
        index = LabelIndex.from_texts(model, texts, label_ids=ids, batch_size=args.batch_size, show_progress_bar=True)
        index.save(args.output)
        print(f"saved {args.output}: {len(index):,} labels, {index.dim} dims")
        return 0

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
        model = load_model(args.model, revision=args.model_revision)
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
