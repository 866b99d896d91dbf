"""``--dtype`` / ``load_model(dtype=)``: the encoder cast for inference reaches every command that encodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dexml_hf.cli import main
from dexml_hf.encoding import encode_texts
from dexml_hf.factory import load_model
from dexml_hf.index import LabelIndex

LABELS = ["python lists", "sql joins", "rust lifetimes", "baking bread", "tax law", "river fishing"]
TEXTS = ["reverse a python list", "inner join two tables", "sourdough starter"]


def _bf16_reference(path):
    """The same model cast by hand (sentence-transformers + torch, not the factory)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").to(torch.bfloat16)


def test_bfloat16_weights_give_fp32_unit_embeddings_close_to_fp32(tiny_model_path):
    fp32 = load_model(str(tiny_model_path))
    bf16 = load_model(str(tiny_model_path), dtype="bfloat16")
    assert next(bf16.parameters()).dtype == torch.bfloat16 and next(fp32.parameters()).dtype == torch.float32
    a, b = encode_texts(fp32, TEXTS, "query"), encode_texts(bf16, TEXTS, "query")
    assert b.dtype == torch.float32
    np.testing.assert_allclose(b.norm(dim=1).numpy(), 1.0, atol=1e-6)  # normalised in fp32, after the cast
    assert not torch.equal(a, b) and torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_predict_dtype_reaches_the_encoder(tiny_model_path, tmp_path, capsys):
    fp32 = load_model(str(tiny_model_path))
    LabelIndex.from_texts(fp32, LABELS).save(tmp_path / "idx")
    index = LabelIndex.load(tmp_path / "idx")
    argv = ["predict", "--model", str(tiny_model_path), "--index", str(tmp_path / "idx"), "--k", "3", "--json", "true"]
    scores = {}
    for dtype in ("float32", "bfloat16"):
        assert main([*argv[:2], str(tiny_model_path), *argv[3:], "--dtype", dtype, *TEXTS]) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
        scores[dtype] = np.array([[h["score"] for h in line["labels"]] for line in lines])
    q = encode_texts(_bf16_reference(tiny_model_path), TEXTS, "query")
    want, _ = index.search(q.numpy(), 3)
    np.testing.assert_allclose(scores["bfloat16"], want, atol=1e-4)
    assert not np.allclose(scores["bfloat16"], scores["float32"], atol=1e-6, rtol=0)


def test_index_build_and_evaluate_use_the_dtype(tiny_model_path, tmp_path):
    synthetic = pytest.importorskip("dexml_hf.data.synthetic")
    from dexml_hf.data import save_to_folder

    ds = synthetic.generate_synthetic_xmc(num_labels=20, num_train=40, num_test=10, seed=0)
    save_to_folder(ds, tmp_path / "ds")
    model, data = str(tiny_model_path), str(tmp_path / "ds")
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"idx_{dtype}"
        assert (
            main(["index", "build", "--model", model, "--dataset", data, "--output", str(out), "--dtype", dtype]) == 0
        )
        report = tmp_path / f"eval_{dtype}"
        argv = ["evaluate", "--model", model, "--dataset", data, "--no_plot", "--output_dir", str(report)]
        assert main([*argv, "--dtype", dtype]) == 0
        assert json.loads((report / "eval_test.json").read_text())["encoder_dtype"] == dtype
    built = LabelIndex.load(tmp_path / "idx_bfloat16").embeddings
    want = encode_texts(_bf16_reference(tiny_model_path), ds.label_texts("title"), "label")
    np.testing.assert_allclose(np.asarray(built, dtype=np.float32), want.numpy(), atol=1e-6)
    assert not np.allclose(np.asarray(LabelIndex.load(tmp_path / "idx_float32").embeddings), want.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "dtype,needle", [("float16", "float16 is for CUDA"), ("int8", "invalid choice")], ids=["fp16-on-cpu", "unknown"]
)
def test_a_dtype_that_cannot_work_here_is_a_one_line_error(tiny_model_path, tmp_path, capsys, dtype, needle):
    from dexml_hf import cli

    code = cli.main(["predict", "--model", str(tiny_model_path), "--index", str(tmp_path), "--dtype", dtype, "x"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1
