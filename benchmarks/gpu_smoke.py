"""GPU smoke check: every negatives mode trains in bf16 and fp16, resumes from its checkpoint, and searches.

For each mode (in_batch, hard, all, all_cached) and precision, on the synthetic dataset with a tiny random BERT
built here (its vocabulary is the dataset's words: nothing is downloaded):

1. train ``steps`` optimizer steps, saving a checkpoint half-way (mining / the label cache included);
2. resume a fresh model and trainer from that checkpoint: it must continue from the checkpoint's step, with the
   restored label cache on the model's device, and end near the uninterrupted run's weights (``max Δw``; exact on
   the CPU, within ``--gpu-tolerance`` on a GPU, where kernels may differ in the last bits);
3. build the label index of the resumed model and search the test queries; the top-1 must equal a brute-force
   argmax over the same embeddings.

One markdown row per case with OK or FAIL; the exit status is 1 if any case failed.

    python benchmarks/gpu_smoke.py                      # CUDA (bf16 and fp16) if there is one, else CPU (fp32)
    python benchmarks/gpu_smoke.py --device cpu --quick # the fp32 CPU run of the tests
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, quiet_libraries  # noqa: E402

MODES = ("in_batch", "hard", "all", "all_cached")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_model(folder: Path, texts: list[str], device: str):
    """A 2-layer, 32-dim random BERT with mean pooling, its WordPiece vocabulary the words of ``texts``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    words = sorted({w for text in texts for w in text.lower().split()})
    (raw / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(raw / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(SPECIALS) + len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    model.save(str(folder / "st"))
    return folder / "st"


def _args(out: Path, mode: str, precision: str, device: str, steps: int):
    from dexml_hf.training_args import DEXMLTrainingArguments

    return DEXMLTrainingArguments(
        output_dir=str(out),
        negatives=mode,
        per_device_train_batch_size=16,
        max_steps=steps,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=steps // 2,
        logging_steps=1,
        report_to="none",
        seed=0,
        label_chunk_size=16,
        label_refresh_steps=steps // 2 + 1,  # refreshed at 0: the resumed run's first step uses the restored table
        shortlist_size=8,
        num_hard_negatives=2,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}


def run_case(xmc, model_path: Path, work: Path, mode: str, precision: str, device: str, steps: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from dexml_hf.index import LabelIndex
    from dexml_hf.trainer import DEXMLTrainer

    row = {"mode": mode, "precision": precision, "device": device}
    full = SentenceTransformer(str(model_path), device=device)
    trainer = DEXMLTrainer(model=full, args=_args(work / "full", mode, precision, device, steps), train_dataset=xmc)
    loss = trainer.train().training_loss
    row["loss"] = float(loss)
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"training loss is {loss}")

    half = steps // 2
    resumed = SentenceTransformer(str(model_path), device=device)
    args = _args(work / "resumed", mode, precision, device, steps)
    second = DEXMLTrainer(model=resumed, args=args, train_dataset=xmc)
    second.train(resume_from_checkpoint=str(work / "full" / f"checkpoint-{half}"))
    row["resumed"] = f"{half} → {second.state.global_step}"
    if second.state.global_step != steps:
        raise RuntimeError(f"the resumed run ended at step {second.state.global_step}, not {steps}")
    if mode == "all_cached" and second._cache.embeddings.device != resumed.device:
        raise RuntimeError(f"label cache on {second._cache.embeddings.device}, model on {resumed.device}")
    expected, got = _weights(full), _weights(resumed)
    row["max Δw"] = max((got[n] - expected[n]).abs().max().item() for n in expected)

    label_texts = xmc.label_texts(args.label_text_mode)
    queries = xmc.query_texts("test", args.query_text_mode)
    index = LabelIndex.from_texts(resumed, label_texts)
    query_embeddings = index.encode_queries(resumed, queries)
    scores, ids = index.search(query_embeddings, k=5)
    brute = (torch.as_tensor(query_embeddings).float().cpu() @ index.embeddings.float().T).argmax(dim=1).numpy()
    if not (ids.shape == (len(queries), 5) and torch.isfinite(torch.as_tensor(scores)).all()):
        raise RuntimeError(f"search returned ids {ids.shape} / non-finite scores")
    if (ids[:, 0] != brute).mean() > 0.05:  # ties may order differently; anything more is a wrong search
        raise RuntimeError("the index's top-1 differs from the brute-force argmax")
    truth = xmc.label_matrices["test"]
    row["P@1"] = 100.0 * float(truth[range(len(queries)), ids[:, 0]].mean())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer labels, queries and steps")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--gpu-tolerance", type=float, default=1e-2, help="largest weight difference accepted on a GPU"
    )
    opts = parser.parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (use --device cpu)")
    quiet_libraries()
    from dexml_hf.data import load_xmc_dataset

    sizes = dict(num_labels=60, num_train=96, num_test=32) if opts.quick else dict(num_labels=400, num_train=640)
    steps = 4 if opts.quick else 20
    xmc = load_xmc_dataset("synthetic", seed=0, **sizes)
    precisions = ("bf16", "fp16") if opts.device == "cuda" else ("fp32",)
    tolerance = opts.gpu_tolerance if opts.device == "cuda" else 1e-5
    rows, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="dexml-gpu-smoke-") as tmp:
        tmp = Path(tmp)
        texts = xmc.query_texts("train") + xmc.query_texts("test") + xmc.label_texts()
        model_path = build_tiny_model(tmp / "model", texts, opts.device)
        for precision in precisions:
            for mode in opts.modes:
                try:
                    row = run_case(xmc, model_path, tmp / f"{mode}-{precision}", mode, precision, opts.device, steps)
                    ok = row["max Δw"] <= tolerance
                    row["result"] = "OK" if ok else f"FAIL (max Δw > {tolerance:g})"
                except Exception as error:  # noqa: BLE001 - one line per failed case, the traceback on stderr
                    traceback.print_exc()
                    row = {"mode": mode, "precision": precision, "device": opts.device, "result": f"FAIL ({error})"}
                failed += not row["result"].startswith("OK")
                rows.append(row)
                print(f"{mode} {precision} {opts.device}: {row['result']}", file=sys.stderr, flush=True)
    print(machine())
    print(markdown_table(rows, ["mode", "precision", "device", "loss", "resumed", "max Δw", "P@1", "result"], ".3g"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
