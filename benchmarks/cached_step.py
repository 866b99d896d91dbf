"""The 'all_cached' step's loss against a large label table: rows replaced by a copy vs fresh positives scored apart.

Each method runs in its own process on the same seeded inputs: a fp32 label table of ``--labels`` × ``--dim``
(the cache), a batch of ``--batch`` queries and their positives' fresh embeddings (with grad), and
``DecoupledSoftmaxLoss.compute_loss_against_labels`` forward + backward, ``--steps`` times:

- ``copy``: the table with the batch's positive rows replaced (``index_put``, an L × d copy a step, as the trainer
  did before session 9), then the loss over it;
- ``fresh``: the loss with ``positive_embeddings=`` — the table is read in place, the positives' columns scored
  against the fresh embeddings.

Reported: seconds a step, the extra peak RSS over the table itself (MB), and the two losses (must agree).

    python benchmarks/cached_step.py                           # 1,000,000 labels x 384, batch 64, 5 steps
    python benchmarks/cached_step.py --quick                   # 20,000 labels, 2 steps: a check that it runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, write_json  # noqa: E402

METHODS = ("copy", "fresh")


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_one(method: str, labels: int, dim: int, batch: int, steps: int) -> dict:
    """One method in this process: the seconds a step, the peak RSS above the table, the last loss."""
    import torch
    from torch import nn

    from dexml_hf.losses import DecoupledSoftmaxLoss

    torch.manual_seed(0)
    table = torch.randn(labels, dim)
    queries = torch.randn(batch, dim, requires_grad=True)
    fresh = torch.randn(batch, dim, requires_grad=True)
    query_ids = torch.arange(batch)
    positive_ids = torch.randint(0, labels, (batch,))
    loss_fn = DecoupledSoftmaxLoss(nn.Identity())
    base = _rss_mb("VmRSS")
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        if method == "copy":
            replaced = table.index_put((positive_ids,), fresh)
            loss = loss_fn.compute_loss_against_labels(queries, replaced, query_ids, positive_ids)
        else:
            loss = loss_fn.compute_loss_against_labels(
                queries, table, query_ids, positive_ids, positive_embeddings=fresh
            )
        loss.backward()
        seconds.append(time.perf_counter() - start)
        del loss
    return {
        "method": method,
        "s / step": round(sorted(seconds)[len(seconds) // 2], 4),
        "extra peak MB": round(_rss_mb("VmHWM") - base, 1),
        "table MB": round(labels * dim * 4 / 2**20, 1),
        "loss": float(
            loss_fn.compute_loss_against_labels(
                queries, table, query_ids, positive_ids, positive_embeddings=fresh
            ).detach()
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="20,000 labels, 2 steps")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.labels, args.steps = 20_000, 2
    if args.child:
        print(json.dumps(run_one(args.child, args.labels, args.dim, args.batch, args.steps)))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    rows = []
    for method in methods:
        cmd = [sys.executable, __file__, "--child", method, "--labels", str(args.labels), "--dim", str(args.dim)]
        cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if len(rows) == 2:
        if abs(rows[0]["loss"] - rows[1]["loss"]) > 1e-4 * max(1.0, abs(rows[0]["loss"])):
            print(f"the two methods disagree: {rows[0]['loss']} vs {rows[1]['loss']}", file=sys.stderr)
            return 1
        rows[1]["speed-up"] = round(rows[0]["s / step"] / rows[1]["s / step"], 2)
    print(f"{machine()}; {args.labels:,} labels x {args.dim}, batch {args.batch}, {args.steps} steps")
    print(markdown_table(rows, ["method", "s / step", "speed-up", "extra peak MB", "table MB", "loss"], ".4g"))
    if args.output:
        settings = {k: str(v) for k, v in vars(args).items()}
        write_json(args.output, {"machine": machine(), "args": settings, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
