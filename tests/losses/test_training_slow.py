"""Slow: DecoupledSoftmaxLoss trains all-MiniLM-L6-v2 on real StackExchange tags and raises test P@1."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from dexml_hf import DecoupledSoftmaxLoss


def read_stackexchange(path):
    """title + content as the query, comma-separated tags as the labels (parsed here, independent of dexml_hf.data)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    queries = [f"{r['title']}\n{r['content']}".strip() for r in rows]
    tags = [[t.strip() for t in r["tags"].split(",") if t.strip()] for r in rows]
    return queries, tags


def precision_at_1(model, queries, truth, tag_names):
    with torch.no_grad():
        q = model.encode(queries, convert_to_tensor=True, normalize_embeddings=True, batch_size=64)
        t = model.encode(tag_names, convert_to_tensor=True, normalize_embeddings=True, batch_size=128)
    hits = 0
    for i, row in enumerate(q):
        best = int(torch.argmax(t @ row))  # brute-force top-1
        hits += tag_names[best] in truth[i]
    return hits / len(queries)


@pytest.mark.slow
def test_decoupled_softmax_raises_p_at_1_on_stackexchange(minilm, shared_data, tmp_path):
    queries, tags = read_stackexchange(shared_data / "stackexchange" / "cooking.csv")
    n_train = 1600
    train_q, train_tags = queries[:n_train], tags[:n_train]
    test_q, test_tags = queries[n_train:], tags[n_train:]
    tag_names = sorted({t for row in tags for t in row})
    tag_id = {t: i for i, t in enumerate(tag_names)}
    rows = [(i, tag_id[t]) for i, row in enumerate(train_tags) for t in row]
    matrix = sp.csr_matrix(
        (np.ones(len(rows)), ([r[0] for r in rows], [r[1] for r in rows])), shape=(n_train, len(tag_names))
    )
    # one sampled positive per query per epoch, 3 epochs (120 steps of 32 use 2.4)
    rng = np.random.default_rng(0)
    data = {"query": [], "positive": [], "label": []}
    for _ in range(3):
        for i in rng.permutation(n_train):
            if not train_tags[i]:
                continue
            tag = train_tags[i][rng.integers(len(train_tags[i]))]
            data["query"].append(train_q[i])
            data["positive"].append(tag)
            data["label"].append([int(i), tag_id[tag]])

    minilm.max_seq_length = 64
    before = precision_at_1(minilm, test_q, test_tags, tag_names)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=32,
        max_steps=120,
        learning_rate=5e-5,
        warmup_ratio=0.1,
        report_to="none",
        save_strategy="no",
        logging_steps=50,
        use_cpu=True,
        seed=0,
    )
    loss = DecoupledSoftmaxLoss(minilm, scale=20.0, label_matrix=matrix)
    SentenceTransformerTrainer(model=minilm, args=args, train_dataset=Dataset.from_dict(data), loss=loss).train()
    after = precision_at_1(minilm, test_q, test_tags, tag_names)
    print(f"test P@1 before {before:.3f} after {after:.3f}")
    assert after > before + 0.05
