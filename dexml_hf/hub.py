"""Loading the released DEXML checkpoints (and other DistilBERT-style dual encoders) as SentenceTransformers.

The checkpoints the DEXML authors published are plain ``DistilBertModel`` repos: ``config.json``,
``model.safetensors`` and a BERT-uncased tokenizer, some later given a ``1_Pooling/`` folder. Loading
them with ``SentenceTransformer(repo_id)`` silently picks *mean* pooling and no normalisation, which is
not how they were trained (CLS token, L2-normalised only for EURLex-4K and LF-AmazonTitles-131K), so the
published numbers would not reproduce. :func:`load_dexml_model` builds the right module stack instead.

Example::

    from dexml_hf import load_dexml_model

    model = load_dexml_model("quicktensor/dexml_eurlex-4k")   # CLS pooling, Normalize, max length 128
    model.save("dexml_eurlex-4k-st")   # now a regular SentenceTransformer folder (modules.json included)

To reproduce a published number: ``dexml-hf evaluate --model quicktensor/dexml_eurlex-4k --dataset <hub id>``
(the registry also records the text each checkpoint was trained on, :func:`resolve_text_modes`: the Wikipedia
checkpoint reads the reference's preprocessed ``wikipedia`` text).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dexml_hf.model_options import check_sequence_length

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEXMLCheckpoint",
    "DEXML_CHECKPOINTS",
    "ResolvedSettings",
    "adjust_pipeline",
    "get_checkpoint",
    "load_dexml_model",
    "resolve_settings",
    "resolve_text_modes",
]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_SEQ_LENGTH = 128


@dataclass(frozen=True)
class DEXMLCheckpoint:
    """A checkpoint released with the DEXML paper: how it was trained and what it scored (DESIGN.md §1)."""

    repo_id: str
    dataset: str
    normalize: bool
    max_seq_length: int
    temperature: float
    precision_at_1: float
    precision_at_5: float
    pooling_mode: str = "cls"
    #: the text the checkpoint was trained on (``XMCDataset`` text modes; ``wikipedia`` = the reference's
    #: lower-cased, split ``title title content`` of LF-Wikipedia-500K): what an evaluation must feed it
    query_text_mode: str = "title"
    label_text_mode: str = "title"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEXML_CHECKPOINTS: dict[str, DEXMLCheckpoint] = {
    c.repo_id: c
    for c in (
        # EURLex-4K's reference text is one raw document a line (the PECOS layout reads it into `title`, so
        # title_content is that text; an LF-style copy gives title + content).
        DEXMLCheckpoint(
            "quicktensor/dexml_eurlex-4k", "EURLex-4K", True, 128, 0.05, 86.78, 60.19, query_text_mode="title_content"
        ),
        DEXMLCheckpoint(
            "quicktensor/dexml_lf-amazontitles-131k", "LF-AmazonTitles-131K", True, 32, 0.05, 42.52, 20.64
        ),
        DEXMLCheckpoint(
            "quicktensor/dexml_lf-amazontitles-1.3m", "LF-AmazonTitles-1.3M", False, 32, 1.0, 58.40, 45.46
        ),
        DEXMLCheckpoint(
            "quicktensor/dexml_lf-wikipedia-500k",
            "LF-Wikipedia-500K",
            False,
            128,
            1.0,
            85.78,
            50.53,
            query_text_mode="wikipedia",
            label_text_mode="wikipedia",
        ),
    )
}


def get_checkpoint(repo_id: str) -> DEXMLCheckpoint | None:
    """The registry entry for ``repo_id`` (case-insensitive, ``@revision`` / trailing ``/`` ignored), or None."""
    key = repo_id.split("@", 1)[0].strip().rstrip("/").lower()
    for known, checkpoint in DEXML_CHECKPOINTS.items():
        if known.lower() == key:
            return checkpoint
    return None


def resolve_text_modes(
    repo_id_or_path: str, query_text_mode: str | None = None, label_text_mode: str | None = None
) -> tuple[str | None, str | None]:
    """The query and label text modes to evaluate ``repo_id_or_path`` with: an explicit mode wins, else the
    registry's (how the released checkpoint was trained: ``wikipedia`` for ``quicktensor/dexml_lf-wikipedia-500k``),
    else ``None`` (the evaluator's default, ``title``).

    ``dexml-hf evaluate`` calls it, so the released Wikipedia checkpoint sees the reference's preprocessed text
    (lower-cased, split on everything but letters, digits and dots) instead of raw text it was never trained on.
    """
    checkpoint = get_checkpoint(repo_id_or_path)
    if checkpoint is None:
        return query_text_mode, label_text_mode
    resolved = (query_text_mode or checkpoint.query_text_mode, label_text_mode or checkpoint.label_text_mode)
    if resolved != (query_text_mode, label_text_mode):
        logger.info(
            "%s was trained on query text %r and label text %r (registry); evaluating with query_text_mode=%s, "
            "label_text_mode=%s",
            repo_id_or_path,
            checkpoint.query_text_mode,
            checkpoint.label_text_mode,
            *resolved,
        )
    return resolved


@dataclass
class ResolvedSettings:
    """The module stack chosen for a checkpoint and where each choice came from (for the log and the tests)."""

    pooling_mode: str
    normalize: bool
    max_seq_length: int
    source: dict[str, str]
    extra_modules: list[str]


def _read_json(
    repo_id_or_path: str,
    filename: str,
    *,
    revision: str | None,
    cache_folder: str | None,
    token: bool | str | None,
    local_files_only: bool,
) -> Any | None:
    """A JSON file of a local folder or Hub repo, or None when the repo does not have it."""
    local = Path(repo_id_or_path)
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            path = Path(
                hf_hub_download(
                    repo_id_or_path,
                    filename,
                    revision=revision,
                    cache_dir=cache_folder,
                    token=token,
                    local_files_only=local_files_only,
                    library_name="dexml_hf",
                )
            )
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{repo_id_or_path}/{filename}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc


def _pooling_mode_from_config(config: dict[str, Any], where: str) -> str:
    """The pooling mode of a ``1_Pooling/config.json``, in the current (``pooling_mode``) or legacy (flags) form."""
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return mode
    if isinstance(mode, list) and len(mode) == 1:
        return mode[0]
    legacy = {
        "pooling_mode_cls_token": "cls",
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens": "weightedmean",
        "pooling_mode_lasttoken": "lasttoken",
    }
    chosen = [name for key, name in legacy.items() if config.get(key)]
    if len(chosen) != 1:
        raise ValueError(f"{where}: expected exactly one pooling mode, found {chosen or 'none'} in {sorted(config)}")
    return chosen[0]


def resolve_settings(
    repo_id_or_path: str,
    *,
    revision: str | None = None,
    normalize: bool | None = None,
    max_seq_length: int | None = None,
    pooling_mode: str | None = None,
    cache_folder: str | None = None,
    token: bool | str | None = None,
    local_files_only: bool = False,
) -> ResolvedSettings:
    """Pooling / normalisation / max length for a checkpoint: explicit argument > registry > repo contents > default.

    Unknown repos are inspected: ``modules.json`` (is there a ``Normalize`` module? other modules?),
    ``1_Pooling/config.json`` (the pooling mode), ``sentence_bert_config.json`` (max length) and
    ``config.json`` (position embeddings cap the max length). Without any of them the DEXML defaults
    apply: CLS pooling, no normalisation (raw dot products), max length 128.
    """
    source: dict[str, str] = {}
    extra_modules: list[str] = []
    checkpoint = get_checkpoint(repo_id_or_path)
    found: dict[str, Any] = {}
    if checkpoint is not None:
        found = {"pooling_mode": checkpoint.pooling_mode, "normalize": checkpoint.normalize}
        found["max_seq_length"] = checkpoint.max_seq_length
        source = dict.fromkeys(found, "registry")
    else:
        read = {
            "revision": revision,
            "cache_folder": cache_folder,
            "token": token,
            "local_files_only": local_files_only,
        }
        modules = _read_json(repo_id_or_path, "modules.json", **read)
        pooling_dir = "1_Pooling"
        if modules is not None:
            if not isinstance(modules, list):
                raise ValueError(
                    f"{repo_id_or_path}/modules.json: expected a list of modules, got {type(modules).__name__}"
                )
            kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
            found["normalize"] = "Normalize" in kinds
            source["normalize"] = "modules.json"
            extra_modules = [k for k in kinds if k not in {"Transformer", "Pooling", "Normalize"}]
            pooling_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")), "")
        if pooling_dir:
            pooling = _read_json(repo_id_or_path, f"{pooling_dir}/config.json", **read)
            if pooling is not None:
                found["pooling_mode"] = _pooling_mode_from_config(
                    pooling, f"{repo_id_or_path}/{pooling_dir}/config.json"
                )
                source["pooling_mode"] = f"{pooling_dir}/config.json"
        st_config = _read_json(repo_id_or_path, "sentence_bert_config.json", **read)
        if st_config and st_config.get("max_seq_length"):
            found["max_seq_length"] = int(st_config["max_seq_length"])
            source["max_seq_length"] = "sentence_bert_config.json"
        else:
            hf_config = _read_json(repo_id_or_path, "config.json", **read) or {}
            positions = hf_config.get("max_position_embeddings")
            if positions:
                found["max_seq_length"] = min(_DEFAULT_MAX_SEQ_LENGTH, int(positions))
                source["max_seq_length"] = "default (capped by config.json max_position_embeddings)"
    defaults = {"pooling_mode": "cls", "normalize": False, "max_seq_length": _DEFAULT_MAX_SEQ_LENGTH}
    explicit = {"pooling_mode": pooling_mode, "normalize": normalize, "max_seq_length": max_seq_length}
    values: dict[str, Any] = {}
    for key, default in defaults.items():
        if explicit[key] is not None:
            values[key], source[key] = explicit[key], "argument"
        elif key in found:
            values[key] = found[key]
        else:
            values[key], source[key] = default, "default"
    return ResolvedSettings(
        pooling_mode=values["pooling_mode"],
        normalize=bool(values["normalize"]),
        max_seq_length=int(values["max_seq_length"]),
        source=source,
        extra_modules=extra_modules,
    )


def load_dexml_model(
    repo_id_or_path: str,
    revision: str | None = None,
    device: str | None = None,
    normalize: bool | None = None,
    max_seq_length: int | None = None,
    *,
    pooling_mode: str | None = None,
    cache_folder: str | None = None,
    token: bool | str | None = None,
    local_files_only: bool = False,
    **kwargs: Any,
) -> SentenceTransformer:
    """Load a DEXML dual encoder as ``SentenceTransformer([Transformer, Pooling(cls), (Normalize)])``.

    Args:
        repo_id_or_path: a Hub repo id (the released ``quicktensor/dexml_*`` ids are in
            :data:`DEXML_CHECKPOINTS`) or a local folder.
        revision: branch, tag or commit on the Hub.
        device: torch device for the model (default: what sentence-transformers picks).
        normalize: add a ``Normalize`` module; overrides the registry / the repo's ``modules.json``.
        max_seq_length: token limit; overrides the registry (32 for AmazonTitles, 128 otherwise).
        pooling_mode: overrides the pooling (CLS for all released checkpoints).
        cache_folder: Hub cache directory (default: ``HF_HOME``'s).
        token, local_files_only: passed to the Hub client.
        **kwargs: passed to :class:`sentence_transformers.sentence_transformer.modules.Transformer`
            (e.g. ``model_kwargs={"torch_dtype": "float16"}``, ``tokenizer_name_or_path=...``).

    Unknown repos that carry a full sentence-transformers pipeline with modules other than
    Transformer / Pooling / Normalize (a Dense head, ...) are loaded with ``SentenceTransformer(...)`` (rebuilding
    them here would drop those modules), then the options given are applied (:func:`adjust_pipeline`). A rebuilt
    sentence-transformers folder keeps the prompts, default prompt and similarity of its
    ``config_sentence_transformers.json`` (``normalize`` given: the similarity is ``cosine`` / ``dot``).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if cache_folder is None and os.environ.get("SENTENCE_TRANSFORMERS_HOME"):
        cache_folder = os.environ["SENTENCE_TRANSFORMERS_HOME"]
    settings = resolve_settings(
        repo_id_or_path,
        revision=revision,
        normalize=normalize,
        max_seq_length=max_seq_length,
        pooling_mode=pooling_mode,
        cache_folder=cache_folder,
        token=token,
        local_files_only=local_files_only,
    )
    if settings.extra_modules:
        logger.warning(
            "%s is a sentence-transformers pipeline with extra modules %s: loading it with SentenceTransformer, "
            "then applying the options given",
            repo_id_or_path,
            settings.extra_modules,
        )
        model = SentenceTransformer(
            repo_id_or_path,
            device=device,
            revision=revision,
            cache_folder=cache_folder,
            token=token,
            local_files_only=local_files_only,
        )
        return adjust_pipeline(
            model, pooling_mode=pooling_mode, normalize=normalize, max_seq_length=max_seq_length, name=repo_id_or_path
        )
    logger.info(
        "Loading %s as a DEXML dual encoder: pooling=%s (%s), normalize=%s (%s), max_seq_length=%d (%s)",
        repo_id_or_path,
        settings.pooling_mode,
        settings.source["pooling_mode"],
        settings.normalize,
        settings.source["normalize"],
        settings.max_seq_length,
        settings.source["max_seq_length"],
    )
    hub = {"revision": revision, "token": token, "local_files_only": local_files_only}
    if cache_folder is not None:
        hub["cache_dir"] = cache_folder
    kw_sets = {}
    for name in ("model_kwargs", "processor_kwargs", "config_kwargs"):
        kw_sets[name] = {**hub, **(kwargs.pop(name, None) or {})}
    transformer = Transformer(repo_id_or_path, max_seq_length=settings.max_seq_length, **kw_sets, **kwargs)
    transformer.max_seq_length = settings.max_seq_length
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=settings.pooling_mode)]
    if settings.normalize:
        modules.append(Normalize())
    # a saved sentence-transformers folder keeps its prompts and similarity through the rebuild
    saved = _read_json(
        repo_id_or_path,
        "config_sentence_transformers.json",
        revision=revision,
        cache_folder=cache_folder,
        token=token,
        local_files_only=local_files_only,
    )
    saved = saved if isinstance(saved, dict) else {}
    # its similarity stands where its own modules.json chose the normalisation (not an argument, not the registry)
    similarity = saved.get("similarity_fn_name") if settings.source.get("normalize") == "modules.json" else None
    model = SentenceTransformer(
        modules=modules,
        device=device,
        prompts=saved.get("prompts") or None,
        default_prompt_name=saved.get("default_prompt_name"),
        similarity_fn_name=similarity or ("cosine" if settings.normalize else "dot"),
    )
    check_sequence_length(model, "max_seq_length", settings.max_seq_length)
    return model


def adjust_pipeline(
    model: SentenceTransformer,
    *,
    pooling_mode: str | None = None,
    normalize: bool | None = None,
    max_seq_length: int | None = None,
    name: str = "model",
) -> SentenceTransformer:
    """Apply the options given to a loaded sentence-transformers pipeline (None keeps the model's own):
    ``pooling_mode`` replaces its Pooling module, ``normalize`` adds or removes the Normalize module and makes the
    similarity ``cosine`` / ``dot``, ``max_seq_length`` sets the token limit (checked against the position table)."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    from dexml_hf.errors import UsageError

    if pooling_mode is not None:
        for idx, module in enumerate(model):
            if isinstance(module, Pooling):
                model[idx] = Pooling(
                    module.get_embedding_dimension(), pooling_mode=pooling_mode, include_prompt=module.include_prompt
                )
                break
        else:
            raise UsageError(f"model {name}: pooling={pooling_mode!r} given but the model has no Pooling module")
    if normalize is not None:
        has_normalize = any(isinstance(m, Normalize) for m in model)
        if normalize and not has_normalize:
            model.append(Normalize())
        elif not normalize and has_normalize:
            for idx in reversed([i for i, m in enumerate(model) if isinstance(m, Normalize)]):
                del model[idx]
        model.similarity_fn_name = "cosine" if normalize else "dot"
    if max_seq_length is not None:
        check_sequence_length(model, "max_seq_length", max_seq_length)
        model.max_seq_length = max_seq_length
    return model


@contextmanager
def hub_token_in_environment(token: str | None):
    """``HF_TOKEN`` set to ``token`` for the duration (an upload the upstream code runs without a token argument)."""
    if token is None:
        yield
        return
    previous = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = token
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = previous
