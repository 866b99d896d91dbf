"""``dexml-hf train``: recipe in, trained model + label index + model card out (and on the Hub when asked).

    dexml-hf train --config recipes/eurlex57k/cpu.yaml --num_train_epochs 2
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m dexml_hf.cli train --config ...

Steps: load the encoder, load the XMC dataset, train with ``DEXMLTrainer``, evaluate exact top-k on the test
split, print the P@k table, save the model, its ``label_index/`` and ``README.md`` (the model card) into
``output_dir``, and push all three in one commit when ``push_to_hub`` is set.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "build_loss", "evaluate_split", "load_data", "load_model", "register", "run_train"]

# Files of output_dir that are not part of the published model.
_PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "test_topk.npy", "*.pt", "*.pth", "training_args.bin"]
_QUERY_MODES = {
    "title": "title",
    "content": "content",
    "title+content": "title_content",
    "title_content": "title_content",
}
_LABEL_MODES = {"title": "title", "title+content": "title_alt", "title_alt": "title_alt", "content": "title_alt"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a dual encoder from a recipe (dexml-hf train --help lists every option)",
        description="Train a DEXML dual encoder. All options: `dexml-hf train --help`.",
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="list every option with its help text")
    parser.add_argument("--config", default=None, help="YAML recipe; --key value options override it")
    parser.set_defaults(func=main, accepts_extra_args=True)


def main(args: argparse.Namespace, extra_argv: list[str]) -> int:
    from dexml_hf.config import build_train_parser, parse_train_args

    if args.help:
        build_train_parser().print_help()
        return 0
    argv = (["--config", args.config] if args.config else []) + list(extra_argv)
    try:
        parsed = parse_train_args(argv)
    except ValueError as err:
        print(f"dexml-hf train: error: {err}", file=sys.stderr)
        return 2
    run_train(*parsed, recipe=args.config, command_line=argv)
    return 0


# ---------------------------------------------------------------------------------------------- pieces
def load_model(model_args):
    """A SentenceTransformer for ``model_args``: registry checkpoints and plain encoders through
    ``load_dexml_model`` (CLS pooling by default), sentence-transformers models as they are, adjusted."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    from dexml_hf.config import hub_base_model, resolve_model_path
    from dexml_hf.hub import get_checkpoint, load_dexml_model

    name = model_args.model_name_or_path
    path = resolve_model_path(name)
    if get_checkpoint(name) is not None or not _is_sentence_transformer(path, model_args.model_revision):
        model = load_dexml_model(
            path,
            revision=model_args.model_revision,
            normalize=model_args.normalize,
            max_seq_length=model_args.max_seq_length,
            pooling_mode=model_args.pooling or (None if get_checkpoint(name) else "cls"),
        )
    else:
        model = SentenceTransformer(path, revision=model_args.model_revision)
        if model_args.pooling is not None:
            for idx, module in enumerate(model):
                if isinstance(module, Pooling):
                    model[idx] = Pooling(module.get_embedding_dimension(), pooling_mode=model_args.pooling)
                    break
            else:
                raise ValueError(
                    f"model {name}: pooling={model_args.pooling!r} given but the model has no Pooling module"
                )
        has_normalize = any(isinstance(m, Normalize) for m in model)
        if model_args.normalize and not has_normalize:
            model.append(Normalize())
        elif model_args.normalize is False and has_normalize:
            for idx in reversed([i for i, m in enumerate(model) if isinstance(m, Normalize)]):
                del model[idx]
        if model_args.max_seq_length is not None:
            model.max_seq_length = model_args.max_seq_length
    normalized = any(isinstance(m, Normalize) for m in model)
    # Inner-product search (LabelIndex) and the losses read this: cosine == dot on normalised embeddings.
    model.similarity_fn_name = "cosine" if normalized else "dot"
    model.model_card_data.base_model = hub_base_model(name)
    return model


def _is_sentence_transformer(path: str, revision: str | None) -> bool:
    local = Path(path)
    if local.is_dir():
        return (local / "modules.json").is_file()
    try:
        from huggingface_hub import file_exists

        return file_exists(path, "modules.json", revision=revision)
    except Exception as err:  # noqa: BLE001 - offline or unknown repo: let SentenceTransformer report it
        logger.warning(
            "could not check %s for modules.json (%s); loading it as a sentence-transformers model", path, err
        )
        return True


def load_data(data_args, training_args=None):
    """The ``XMCDataset`` named by ``data_args`` (train split cut to ``max_train_samples``)."""
    from dexml_hf.data import XMCDataset

    if data_args.dataset == "synthetic":
        from dexml_hf.data.synthetic import SYNTHETIC_NOTICE, generate_synthetic_xmc

        print(SYNTHETIC_NOTICE, flush=True)
        dataset = generate_synthetic_xmc(
            num_labels=data_args.synthetic_num_labels,
            num_train=data_args.synthetic_num_train,
            num_test=data_args.synthetic_num_test,
            num_validation=200 if data_args.eval_split == "validation" else 0,
            seed=data_args.synthetic_seed,
        )
    elif data_args.dataset_format is not None or Path(data_args.dataset).exists():
        from dexml_hf.data.formats import read_xmc

        fmt = data_args.dataset_format or "auto"
        reader_kwargs = {}
        if fmt == "movielens":
            reader_kwargs = {
                "max_titles": data_args.movielens_max_titles,
                "train_positives": data_args.movielens_train_positives,
                "views": data_args.movielens_views,
            }
        dataset = read_xmc(data_args.dataset, format=fmt, **reader_kwargs)
    else:
        from dexml_hf.data import load_xmc_dataset

        token = getattr(training_args, "hub_token", None)
        dataset = load_xmc_dataset(data_args.dataset, revision=data_args.dataset_revision, token=token)
    for split in ("train", data_args.test_split, data_args.eval_split):
        if split is not None and split not in dataset.queries:
            raise ValueError(f"dataset {data_args.dataset}: no {split!r} split (has {', '.join(dataset.splits)})")
    n = data_args.max_train_samples
    if n is not None and n < dataset.num_queries("train"):
        queries = dict(dataset.queries)
        matrices = dict(dataset.label_matrices)
        queries["train"] = queries["train"].select(range(n))
        matrices["train"] = matrices["train"][:n]
        filters = dict(dataset.filters)
        if "train" in filters:
            filters["train"] = filters["train"][filters["train"][:, 0] < n]
        dataset = XMCDataset(queries, dataset.labels, matrices, filters, family=dataset.family, name=dataset.name)
    return dataset


def _example_query(dataset, split: str, mode: str) -> str:
    """The first non-empty query text of ``split``: the card's usage snippet then speaks the data's language."""
    from dexml_hf.model_card import DEXMLModelCardData

    texts = dataset.query_texts(split, _QUERY_MODES[mode])
    return next((text for text in texts[:100] if text.strip()), DEXMLModelCardData.example_query)


def build_loss(loss_args, training_args, model, label_matrix):
    """The loss named by ``loss_args`` with scale 1/τ, the train label matrix (for masking) and the model's similarity."""
    from sentence_transformers.util import cos_sim, dot_score

    from dexml_hf import losses

    classes = {
        "decoupled_softmax": losses.DecoupledSoftmaxLoss,
        "cached_decoupled_softmax": losses.CachedDecoupledSoftmaxLoss,
        "softmax": losses.SoftmaxLoss,
        "soft_topk": losses.SoftTopKLoss,
        "cached_soft_topk": losses.CachedSoftTopKLoss,
        "ova_bce": losses.OvABCELoss,
    }
    kwargs: dict[str, Any] = {
        "scale": 1.0 / training_args.temperature,
        "label_matrix": label_matrix,
        "gather_across_devices": training_args.world_size > 1,
        "similarity_fct": cos_sim if model.similarity_fn_name == "cosine" else dot_score,
    }
    if loss_args.loss in ("soft_topk", "cached_soft_topk"):
        kwargs.update(k=loss_args.topk_k, alpha=loss_args.topk_alpha)
    if loss_args.logq_correction:
        kwargs["logq_correction"] = True
    return classes[loss_args.loss](model, **kwargs)


def evaluate_split(model, dataset, split: str, training_args, data_args, index=None) -> tuple[dict, Any, Any]:
    """Exact top-k over all labels for ``split``: (metrics, top-k ids, LabelIndex)."""
    from dexml_hf.evaluation import xmc_metrics
    from dexml_hf.index import LabelIndex

    batch_size = getattr(training_args, "encode_batch_size", 256)
    if index is None:
        index = LabelIndex.from_texts(
            model,
            dataset.label_texts(_LABEL_MODES[getattr(training_args, "label_text_mode", "title")]),
            label_ids=dataset.labels["uid"],
            batch_size=batch_size,
        )
    texts = dataset.query_texts(split, _QUERY_MODES[getattr(training_args, "query_text_mode", "title")])
    truth = dataset.label_matrices[split]
    exclude = dataset.filters.get(split)
    n = data_args.max_test_samples
    if n is not None and n < len(texts):
        texts, truth = texts[:n], truth[:n]
        exclude = exclude[exclude[:, 0] < n] if exclude is not None else None
    queries = index.encode_queries(model, texts, batch_size=batch_size)
    k = min(data_args.top_k, len(index))
    _, ids = index.search(queries, k=k, exclude=exclude if exclude is not None and len(exclude) else None)
    inv_p = (
        dataset.inv_propensity(data_args.propensity_a, data_args.propensity_b) if "train" in dataset.queries else None
    )
    metrics = xmc_metrics(ids, truth, ks=(1, 3, 5), inv_propensity=inv_p)
    return metrics, ids, index


def _print_table(title: str, rows: list[tuple[str, dict]]) -> None:
    from dexml_hf.model_card import METRIC_ROWS

    keys = [(k, name) for k, name in METRIC_ROWS if all(k in m for _, m in rows)]
    print(f"\n{title}")
    print("| model | " + " | ".join(name for _, name in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for label, metrics in rows:
        print(f"| {label} | " + " | ".join(f"{100 * metrics[k]:.2f}" for k, _ in keys) + " |")
    print(flush=True)


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None = None
    pushed_to: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- the run
def run_train(model_args, data_args, loss_args, training_args, recipe=None, command_line=None) -> TrainResult:
    """Train, evaluate, save, render the card, push. Returns the test metrics (on the main process)."""
    import numpy as np
    import yaml

    from dexml_hf.config import hub_base_model, redacted_args_dict
    from dexml_hf.model_card import PAPER_RESULTS, DEXMLModelCardCallback, DEXMLModelCardData
    from dexml_hf.trainer import DEXMLTrainer

    start = time.time()
    output_dir = Path(training_args.output_dir)
    model = load_model(model_args)
    dataset = load_data(data_args, training_args)
    main_process = training_args.process_index == 0
    if main_process:
        summary = dataset.summary() if hasattr(dataset, "summary") else {}
        print(f"dataset {data_args.dataset}: {json.dumps(summary, default=str)[:600]}", flush=True)

    baseline = None
    if data_args.evaluate_untrained and main_process:
        baseline, _, _ = evaluate_split(model, dataset, data_args.test_split, training_args, data_args)

    loss = build_loss(loss_args, training_args, model, dataset.label_matrices["train"])
    synthetic = data_args.dataset == "synthetic"
    is_hub_id = not synthetic and not Path(data_args.dataset).exists()
    card = DEXMLModelCardData(
        model_id=training_args.hub_model_id if training_args.push_to_hub else None,
        base_model=hub_base_model(model_args.model_name_or_path),
        dataset_name=dataset.name or Path(data_args.dataset).name,
        dataset_id=data_args.dataset if is_hub_id else None,
        dataset_is_synthetic=synthetic,
        num_labels=dataset.num_labels,
        num_train_queries=dataset.num_queries("train"),
        eval_split=data_args.test_split,
        filtered=bool(len(dataset.filters.get(data_args.test_split, ()))),
        example_query=_example_query(dataset, data_args.test_split, training_args.query_text_mode),
        query_text_mode=training_args.query_text_mode,
        label_text_mode=training_args.label_text_mode,
        pooling=model_args.pooling,
        normalize=model.similarity_fn_name == "cosine",
        negatives=training_args.negatives,
        temperature=training_args.temperature,
        top_k=data_args.top_k,
        recipe=recipe,
        train_command=_command(command_line),
        reference_results=PAPER_RESULTS.get(Path(recipe).parent.name) if recipe else None,
        tags=[
            "sentence-transformers",
            "dexml",
            "extreme-multi-label-classification",
            "dual-encoder",
            *(["synthetic-data"] if synthetic else []),
        ],
    )
    card.set_loss(loss)
    callback = DEXMLModelCardCallback(card, args_class=type(training_args))

    eval_dataset = None
    if data_args.eval_split:
        eval_dataset = data_args.eval_split
    trainer = DEXMLTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        loss=loss,
        callbacks=[callback],
    )
    train_output = trainer.train()
    if not trainer.is_world_process_zero():
        return TrainResult(output_dir=output_dir, metrics={})

    model = trainer.model
    metrics, topk, index = evaluate_split(model, dataset, data_args.test_split, training_args, data_args)
    rows = ([("untrained", baseline)] if baseline else []) + [("trained", metrics)]
    _print_table(f"{dataset.name or data_args.dataset} — {data_args.test_split} split, exact search (%)", rows)
    if synthetic:
        from dexml_hf.data.synthetic import SYNTHETIC_NOTICE

        print(SYNTHETIC_NOTICE, flush=True)

    # Save: model, label index, card, metrics, the (token-free) configuration.
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir), create_model_card=False)
    index.save(output_dir / "label_index")
    np.save(output_dir / "test_topk.npy", topk)
    card.set_model(model)
    card.metrics = metrics
    card.baseline_metrics = baseline
    card.num_eval_queries = int(topk.shape[0])
    runtime = getattr(train_output, "metrics", {}).get("train_runtime")
    if runtime is not None:
        card.train_runtime = f"{runtime / 60:.1f} min ({trainer.state.global_step} steps)"
    card.save(output_dir / "README.md")
    results = {"test_split": data_args.test_split, "metrics": metrics, "untrained_metrics": baseline}
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    config_dump = redacted_args_dict(model_args, data_args, loss_args, training_args)
    (output_dir / "train_config.yaml").write_text(yaml.safe_dump(config_dump, sort_keys=True), encoding="utf-8")
    print(f"saved model, label_index/ and README.md to {output_dir} ({time.time() - start:.0f} s in all)", flush=True)

    pushed = None
    if training_args.push_to_hub:
        pushed = push_output_dir(output_dir, training_args)
        print(f"pushed model, label index and card to {pushed}", flush=True)
    return TrainResult(output_dir=output_dir, metrics=metrics, baseline_metrics=baseline, pushed_to=pushed)


def push_output_dir(output_dir: Path, training_args) -> str:
    """One commit with the model, ``label_index/`` and ``README.md`` (checkpoints and run logs left out)."""
    from huggingface_hub import HfApi

    repo_id = training_args.hub_model_id or output_dir.resolve().name
    api = HfApi(token=training_args.hub_token)
    repo_id = api.create_repo(repo_id, private=training_args.hub_private_repo, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="DEXML model, label index and model card",
        ignore_patterns=_PUSH_IGNORE,
    )
    return repo_id


def _command(argv: list[str] | None) -> str | None:
    """The command that trained the model, with any token-like value masked."""
    if argv is None:
        return None
    shown, hide_next = [], False
    for item in argv:
        if hide_next:
            shown.append("***")
            hide_next = False
            continue
        key = item.lstrip("-").split("=", 1)[0].lower()
        if item.startswith("--") and any(m in key for m in ("token", "password", "secret")):
            if "=" in item:
                shown.append(item.split("=", 1)[0] + "=***")
            else:
                shown.append(item)
                hide_next = True
            continue
        shown.append(item)
    return "dexml-hf train " + " ".join(shlex.quote(x) for x in shown)
