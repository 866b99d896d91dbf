"""Tiny random BERTs for tests, built locally from a config (nothing downloads).

Shared by the ``tiny_model`` fixture and by subprocess workers, which cannot use fixtures.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_bert(path: Path, tokenizer_path: str, pooler: bool = False, dropout: float = 0.1) -> Path:
    """A 2-layer, 32-dim BERT with ``tokenizer_path``'s tokenizer and mean pooling, saved as a SentenceTransformer.

    ``pooler=True`` keeps BERT's (unused) pooler, as real checkpoints have; ``dropout=0`` makes runs that draw
    different dropout masks (1 vs 2 processes) comparable.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = Path(path)
    raw = path / "raw"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    model.save(str(path / "st"))
    return path / "st"
