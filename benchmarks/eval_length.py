"""Train short, predict long: one dual encoder trained on ``--train-max-length`` tokens, evaluated at several lengths.

``DEXMLTrainingArguments.max_length`` limits the training batches only; the model's ``max_seq_length`` (what
evaluation, the label index and the retrieval memory use) is a separate choice. This script trains one model
(``benchmarks/eurlex_rae.py``'s ``train``: decoupled softmax, in-batch negatives, batch 64) and reports, for each
evaluation length, exact search over all labels with and without the retrieval memory (λ, k, T chosen on the
validation split). Same data options as eurlex_rae.py.

    python benchmarks/eval_length.py                      # EURLEX57K subset: 4,000 / 500 / 1,000, 125 steps
    python benchmarks/eval_length.py --quick              # ~2 min: 1,000 / 200 / 200 documents, 10 steps
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, markdown_table, quiet_libraries, write_json  # noqa: E402
from eurlex_rae import DATASETS, METRICS, base_model, evaluate, load_data, row, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 / 200 / 200 documents, 10 steps, lengths 32,64")
    parser.add_argument("--dataset", default="eurlex57k", choices=DATASETS)
    parser.add_argument("--data", default=str(SHARED_DATA / "eurlex57k"), help="the EURLEX57K folder")
    parser.add_argument("--max-train", type=int, default=4000)
    parser.add_argument("--max-val", type=int, default=500)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=125)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--train-max-length", type=int, default=32, help="token limit of the training batches")
    parser.add_argument("--lengths", default="32,64,128", help="comma-separated evaluation max_seq_length values")
    parser.add_argument("--tune-metric", default="precision@1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/eval_length.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train, args.max_val, args.max_test, args.steps = 1000, 200, 200, 10
        args.lengths = "32,64"
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    if not lengths or min(lengths) <= 0:
        raise SystemExit("--lengths must be positive integers")
    # what eurlex_rae's train / evaluate read from their namespace
    args.epochs, args.cooccurrence_top, args.progress = 1.0, 0, False

    quiet_libraries()
    started = time.perf_counter()
    xmc = load_data(args)
    sizes = {s: xmc.num_queries(s) for s in xmc.splits}
    base = base_model(args.train_max_length)
    with tempfile.TemporaryDirectory(prefix="dexml-eval-length-") as workdir:
        model, train_s, steps = train(base, xmc, args, workdir, augment=False)
    print(f"trained {steps} steps on {args.train_max_length} tokens in {train_s:.0f} s", flush=True)
    rows = []
    for length in lengths:
        model.max_seq_length = length
        plain, fused, info = evaluate(model, xmc, args)
        note = f"lam {info['lam']}, k {info['k']}, T {info['temperature']}"
        rows.append(row(f"evaluated on {length} tokens", plain, info["eval_seconds"]))
        rows.append(row(f"evaluated on {length} tokens + retrieval", fused, info["retrieval_seconds"], note))
        print(markdown_table(rows[-2:], list(rows[-1])), flush=True)

    columns = ["method", *(label for label, _ in METRICS), "time (s)", "notes"]
    print(
        f"\n{args.dataset}: {sizes}, {xmc.num_labels} labels; trained {steps} steps on {args.train_max_length} tokens "
        f"(batch {args.batch_size}, lr {args.lr}, seed {args.seed}); total {(time.perf_counter() - started) / 60:.1f} min"
    )
    print(f"machine: {machine()}\n")
    print(markdown_table(rows, columns))
    output = Path(
        args.output or Path(__file__).parent / "results" / f"eval_length{'_quick' if args.quick else ''}.json"
    )
    write_json(
        output,
        {
            "command": "python benchmarks/eval_length.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine(),
            "sizes": sizes,
            "settings": {k: v for k, v in vars(args).items() if k not in ("output", "progress")},
            "train_seconds": round(train_s, 1),
            "rows": rows,
        },
    )
    print(f"\nwritten: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
