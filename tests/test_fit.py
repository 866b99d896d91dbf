"""Legacy ``model.fit()`` with ``DecoupledSoftmaxLoss`` (in-batch negatives).

Usage (sentence-transformers' pre-v3 API; ``fit`` builds a ``SentenceTransformerTrainer`` behind the scenes)::

    from sentence_transformers import InputExample, SentenceTransformer
    from torch.utils.data import DataLoader

    from dexml_hf import DecoupledSoftmaxLoss

    model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    # one example per (query, positive label): texts = [query text, label text],
    # label = [query id, label id] (row / column of the queries x labels matrix Y, a scipy CSR)
    examples = [InputExample(texts=[queries[q], label_texts[l]], label=[q, l]) for q, l in zip(*Y.nonzero())]
    loss = DecoupledSoftmaxLoss(model, scale=20.0, label_matrix=Y)  # Y masks a query's other positives
    model.fit(train_objectives=[(DataLoader(examples, shuffle=True, batch_size=64), loss)], epochs=1)

``fit`` turns each ``InputExample.label`` list into a ``label`` column; the collator hands the loss a
``LongTensor (B, 2)`` of ``[query id, label id]``, which is what the loss needs to find, among the
batch's labels, the other positives of each query (never counted as negatives).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

# 8 topics, each with an arbitrary code name as its label text (so the model has to *learn* the mapping)
TOPICS = {
    "zorbex": "telescope orbit comet galaxy planet rocket",
    "quillan": "flour oven butter dough recipe skillet",
    "marvoy": "goal referee stadium league coach penalty",
    "tessic": "loan mortgage dividend stock bond budget",
    "palunt": "soil compost seed tomato pruning greenhouse",
    "gravish": "guitar melody chord drum piano concert",
    "lornet": "vaccine fever clinic surgeon symptom dose",
    "vemble": "court judge verdict lawsuit attorney statute",
}


def _problem(num_queries=48, seed=0):
    """Queries mixing the words of two topics; both topics' labels are positives (multi-label)."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    texts, rows, cols = [], [], []
    for q in range(num_queries):
        a, b = rng.choice(len(names), size=2, replace=False)
        words = rng.choice(TOPICS[names[a]].split(), 3, replace=False).tolist()
        words += rng.choice(TOPICS[names[b]].split(), 2, replace=False).tolist()
        rng.shuffle(words)
        texts.append(" ".join(words))
        rows += [q, q]
        cols += [int(a), int(b)]
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(num_queries, len(names)))
    return texts, names, matrix


def _mean_loss(model, loss, examples, batch_size=16):
    """The loss over fixed batches (same order each call), without gradients."""
    values = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            features = [model.preprocess([ex.texts[i] for ex in batch]) for i in range(2)]
            features = [{k: v.to(model.device) if torch.is_tensor(v) else v for k, v in f.items()} for f in features]
            labels = torch.tensor([ex.label for ex in batch], dtype=torch.long)
            values.append(float(loss(features, labels)))
    return float(np.mean(values))


def test_fit_with_decoupled_softmax_lowers_the_loss(minilm, tmp_path, monkeypatch):
    from sentence_transformers import InputExample
    from torch.utils.data import DataLoader

    from dexml_hf import DecoupledSoftmaxLoss

    monkeypatch.chdir(tmp_path)  # fit() writes its default checkpoint folder in the working directory
    torch.manual_seed(0)
    texts, names, matrix = _problem()
    coo = matrix.tocoo()
    examples = [
        InputExample(texts=[texts[q], names[lab]], label=[int(q), int(lab)]) for q, lab in zip(coo.row, coo.col)
    ]
    loss = DecoupledSoftmaxLoss(minilm, scale=20.0, label_matrix=matrix)
    before = {name: p.detach().clone() for name, p in minilm.named_parameters()}
    loss_before = _mean_loss(minilm, loss, examples)

    loader = DataLoader(examples, shuffle=True, batch_size=16)  # 96 examples -> 6 steps an epoch
    minilm.fit(
        train_objectives=[(loader, loss)],
        epochs=5,
        warmup_steps=2,
        optimizer_params={"lr": 1e-4},
        show_progress_bar=False,
        checkpoint_path=str(tmp_path / "ckpt"),
    )

    changed = [name for name, p in minilm.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert len(changed) > 0.9 * len(before)
    loss_after = _mean_loss(minilm, loss, examples)
    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)

    # and the learnt mapping ranks a query's true topics first more often than before training
    q = minilm.encode(texts, convert_to_tensor=True)
    lab = minilm.encode(names, convert_to_tensor=True)
    top1 = (q @ lab.T).argmax(dim=1).tolist()
    hits = matrix.toarray()[np.arange(len(texts)), top1]
    assert hits.mean() >= 0.8
