"""What a model's own settings mean for training: the similarity it scores by, the prompts its inputs get, the
sequence length its position embeddings allow. Read in one place, so training and serving agree and a value the
model cannot honour is refused before anything trains.

- Similarity: the label index, the evaluator, mining and the retrieval fusion rank by inner product, so a dual
  encoder here scores by ``cosine`` (L2-normalised embeddings) or ``dot`` (raw). Euclidean and Manhattan models are
  refused (:func:`check_similarity`) rather than silently scored by cosine.
- Prompts: a training row gets exactly the prompt :func:`dexml_hf.index.encode_texts` would give its text (the
  query prompt for the query column, the label prompt for the label columns), :func:`prompt_for` /
  :func:`training_prompts`.
- Lengths: a ``max_seq_length`` or training ``max_length`` beyond a learned absolute position table would fail deep
  inside the encoder's forward (:func:`check_sequence_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dexml_hf.errors import UsageError

__all__ = [
    "SUPPORTED_SIMILARITIES",
    "check_loss_similarity",
    "check_sequence_length",
    "check_similarity",
    "position_limit",
    "prompt_for",
    "similarity_name",
    "training_prompts",
    "training_text_columns",
    "validate_for_training",
]

#: model similarity -> the sentence-transformers function the losses score with
SUPPORTED_SIMILARITIES = {"cosine": "cos_sim", "dot": "dot_score"}


def similarity_name(model) -> str:
    """The model's ``similarity_fn_name`` as a plain string (sentence-transformers defaults it to ``cosine``)."""
    name = getattr(model, "similarity_fn_name", None) or "cosine"
    return str(getattr(name, "value", name))


def check_similarity(model) -> str:
    """The model's similarity if the whole pipeline can honour it (``cosine`` / ``dot``); else a UsageError."""
    name = similarity_name(model)
    if name not in SUPPORTED_SIMILARITIES:
        raise UsageError(
            f"model similarity_fn_name={name!r} is not supported: the label index, evaluation, hard-negative mining "
            "and the retrieval memory rank labels by inner product, so a DEXML dual encoder scores by 'cosine' "
            "(normalize: true) or 'dot' (normalize: false); set model.similarity_fn_name to one of them"
        )
    return name


def check_loss_similarity(model, loss) -> None:
    """A DEXML loss must score like the model it trains (else it trains one similarity and serves another)."""
    from sentence_transformers.util import similarity_fct_name

    expected = SUPPORTED_SIMILARITIES[check_similarity(model)]
    fct = getattr(loss, "similarity_fct", None)
    if fct is None:
        return
    got = similarity_fct_name(fct)
    if got != expected:
        raise UsageError(
            f"the loss scores with similarity_fct={got} but the model's similarity_fn_name is "
            f"{similarity_name(model)!r} (what the label index and evaluation rank by): build the loss with "
            f"similarity_fct={expected}, or leave loss unset so the trainer builds it from the model"
        )


# ---------------------------------------------------------------------------------------------------- prompts
def prompt_for(model, role: str) -> str | None:
    """The prompt text :func:`dexml_hf.index.encode_texts` prepends to a ``role`` (``query`` / ``label``) text: the
    role's prompt when the model defines one, else its ``default_prompt_name``'s (sentence-transformers' rule for
    ``encode(prompt_name=None)``), else None."""
    from dexml_hf.index import prompt_name_for

    prompts = getattr(model, "prompts", None) or {}
    name = prompt_name_for(model, role) or getattr(model, "default_prompt_name", None)
    return prompts.get(name) or None if name else None


def training_prompts(model, columns: Sequence[str], given: Any = None) -> dict[str, str]:
    """The collator's ``prompts`` (column -> prompt) for training rows whose first text column is the query and the
    others labels, so training sees the inputs the index, evaluation, mining and the label cache encode.

    ``given`` (``args.prompts``) is accepted only when it says the same: prompts are the model's, set there."""
    columns = list(columns)
    query, label = prompt_for(model, "query"), prompt_for(model, "label")
    derived = {col: p for col, p in zip(columns, [query] + [label] * (len(columns) - 1), strict=True) if p}
    if given:
        wanted = {col: given for col in columns} if isinstance(given, str) else given
        if not isinstance(wanted, dict) or {c: p for c, p in wanted.items() if p} != derived:
            raise UsageError(
                f"prompts={given!r}: training rows take the model's own prompts ({derived or 'none'} for the columns "
                f"{columns}), the ones the label index, evaluation and mining encode with; set model.prompts "
                "('query', 'label' or 'document') / default_prompt_name instead of the prompts option"
            )
    return derived


# ---------------------------------------------------------------------------------------------------- lengths
def position_limit(model) -> int | None:
    """Tokens the first module's encoder can take: the size of its learned absolute position table (less RoBERTa's
    padding offset), or None when it has none (rotary / relative positions: no hard limit to check)."""
    import torch

    first = next(iter(model), None) if hasattr(model, "__iter__") else None
    backbone = getattr(first, "model", None)
    if not isinstance(backbone, torch.nn.Module):
        return None
    config = getattr(backbone, "config", None)
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return None
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] == "position_embeddings" and isinstance(module, torch.nn.Embedding):
            padding = module.padding_idx
            return module.num_embeddings - (padding + 1 if padding is not None else 0)
    return None


def check_sequence_length(model, option: str, value: int | None) -> None:
    """A UsageError naming ``option`` when ``value`` tokens exceed the encoder's position table."""
    if value is None:
        return
    limit = position_limit(model)
    if limit is not None and value > limit:
        raise UsageError(
            f"{option}={value} exceeds the {limit} positions the encoder has (its max_position_embeddings): "
            f"set {option} <= {limit}"
        )


# ---------------------------------------------------------------------------------------------------- training
def training_text_columns(args, train_dataset=None, xmc=None) -> list[str]:
    """The text columns of the training rows, query first: those the XMCDataset view yields in ``args.negatives``
    mode, else the given rows' columns less the label ones."""
    if xmc is not None:
        if args.negatives == "all":  # the engine embeds the label chunks itself (with the label prompt)
            return ["query"]
        negatives = args.num_hard_negatives if args.negatives == "hard" else 0
        return ["query", "positive"] + [f"negative_{j + 1}" for j in range(negatives)]
    names = getattr(train_dataset, "column_names", None)
    if not isinstance(names, list):
        return []
    return [c for c in names if c not in ("label", "labels", "score", "scores", "dataset_name")]


def validate_for_training(model, args, loss=None, num_labels: int | None = None) -> None:
    """Every option checked against the model (and the label count) it applies to, before anything trains: one
    UsageError naming the option, its value and the limit."""
    check_similarity(model)
    if loss is not None:
        check_loss_similarity(model, loss)
    check_sequence_length(model, "max_seq_length", getattr(model, "max_seq_length", None))
    check_sequence_length(model, "max_length", args.max_length)
    if num_labels is None:
        return
    if "soft_topk" in args.loss and args.negatives in ("all", "all_cached") and args.topk_k != "num_pos":
        if args.topk_k >= num_labels:
            raise UsageError(
                f"topk_k={args.topk_k} but the dataset has {num_labels} labels: a query sees every label in "
                f"negatives={args.negatives!r} mode, so the soft top-k loss would be 0; set topk_k < {num_labels}"
            )
    if args.retrieval_memory:
        from dexml_hf.retrieval import parse_selection_metric

        depth = max(at for _, at in parse_selection_metric(args.retrieval_metric))
        if depth > num_labels:
            raise UsageError(
                f"retrieval_metric={args.retrieval_metric!r} ranks {depth} labels but the dataset has {num_labels}; "
                f"use a cut-off <= {num_labels}"
            )
