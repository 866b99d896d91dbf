"""``predict_corpus`` / ``dexml-hf predict --input --output``: every input format gives what ``LabelIndex.search``
gives on all texts at once; a run killed with SIGKILL resumes to the same bytes; 2 processes write the same file as
one; bad input is a DataError naming file and line with nothing at the output path."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dexml_hf.cli import main
from dexml_hf.errors import DataError, UsageError
from dexml_hf.index import LabelIndex
from dexml_hf.predict import predict_corpus
from tests._ports import free_port

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["python lists", "sql joins", "rust lifetimes", "baking bread", "linear algebra", "tax law", "jazz"]
WORDS = "list join borrow bread matrix tax saxophone reverse inner lifetime oven vector court melody".split()


def _docs(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 9)))) for _ in range(n)]


@pytest.fixture()
def index(tiny_model):
    return LabelIndex.from_texts(tiny_model, LABELS, label_ids=[f"L{i}" for i in range(len(LABELS))])


def _read(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _check_against_search(rows, model, index, texts, k, ids=None):
    """Rows equal one in-memory search over all texts (ids exact, scores to float32 precision)."""
    scores, top = index.search(index.encode_queries(model, texts), k)
    assert [r["row"] for r in rows] == list(range(len(texts)))
    if ids is not None:
        assert [r["id"] for r in rows] == ids
    else:
        assert all("id" not in r for r in rows)
    for r, s, t in zip(rows, scores, top):
        assert r["label_ids"] == t.tolist()
        assert r["label_uids"] == [f"L{j}" for j in t]
        assert r["label_texts"] == [LABELS[j] for j in t]
        np.testing.assert_allclose(r["scores"], s, rtol=1e-6, atol=1e-6)


def _write_input(folder: Path, fmt: str, texts: list[str], ids: list | None) -> tuple[Path, dict]:
    """The corpus in ``fmt`` with the text under ``body`` (a non-default field) and the ids under ``key``."""
    if fmt == "text":
        path = folder / "docs.txt"
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        return path, {}
    options = {"text_field": "body", "id_field": "key"}
    if fmt == "jsonl":
        path = folder / "docs.jsonl"
        lines = [json.dumps({"key": i, "other": 1, "body": t}) for i, t in zip(ids, texts)]
        path.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n", encoding="utf-8")  # blank line
    elif fmt == "csv":
        path = folder / "docs.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "body"])
            writer.writerows(zip(ids, texts))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "docs.parquet"
        pq.write_table(pa.table({"body": texts, "key": ids, "x": list(range(len(texts)))}), path, row_group_size=7)
    return path, options


@pytest.mark.parametrize("fmt", ["text", "jsonl", "csv", "parquet"])
@pytest.mark.parametrize("out_ext", [".jsonl", ".parquet"])
def test_each_file_format_equals_one_in_memory_search(tiny_model, index, tmp_path, fmt, out_ext):
    texts = _docs(41)
    texts[5] = 'a "quoted", comma\tand tab'  # CSV quoting
    ids = [f"doc-{i}" for i in range(len(texts))] if fmt == "csv" else [100 + i for i in range(len(texts))]
    path, options = _write_input(tmp_path, fmt, texts, ids)
    out = tmp_path / f"pred{out_ext}"
    predict_corpus(tiny_model, index, path, out, top_k=3, batch_size=4, rows_per_part=8, show_progress_bar=False,
                   **options)  # fmt: skip
    _check_against_search(_read(out), tiny_model, index, texts, 3, ids=None if fmt == "text" else ids)
    assert not (tmp_path / f"pred{out_ext}.partial").exists()


def test_xmc_dataset_split_and_a_hub_dataset(tiny_model, index, tmp_path, hub_repo_id, hf_cache):
    import datasets

    from dexml_hf.data import save_to_folder
    from dexml_hf.data.synthetic import generate_synthetic_xmc

    ds = generate_synthetic_xmc(num_labels=len(LABELS), num_train=20, num_test=13, seed=0)
    save_to_folder(ds, tmp_path / "ds")
    out = tmp_path / "xmc.jsonl"
    predict_corpus(tiny_model, index, tmp_path / "ds", out, top_k=2, batch_size=4, split="test",
                   query_text_mode="wikipedia", show_progress_bar=False)  # fmt: skip
    texts = ds.query_texts("test", "wikipedia")
    assert texts != ds.query_texts("test", "title")  # the mode is not the default's text
    _check_against_search(_read(out), tiny_model, index, texts, 2, ids=ds.queries["test"]["uid"])

    texts, other = _docs(9), _docs(12)[3:]
    datasets.Dataset.from_dict({"sentence": texts, "n": list(range(9))}).push_to_hub(hub_repo_id, split="validation")
    datasets.Dataset.from_dict({"sentence": other, "n": list(range(9))}).push_to_hub(
        hub_repo_id, config_name="other", split="validation"
    )
    out = tmp_path / "hub.parquet"
    predict_corpus(tiny_model, index, hub_repo_id, out, top_k=2, batch_size=2, input_format="hub",
                   split="validation", text_field="sentence", id_field="n", show_progress_bar=False)  # fmt: skip
    _check_against_search(_read(out), tiny_model, index, texts, 2, ids=list(range(9)))
    predict_corpus(tiny_model, index, hub_repo_id, out, top_k=2, batch_size=2, input_format="hub", overwrite=True,
                   split="validation", hub_config="other", text_field="sentence", show_progress_bar=False)  # fmt: skip
    _check_against_search(_read(out), tiny_model, index, other, 2)


def test_retrieval_memory_is_used_unless_switched_off(tiny_model, index, tmp_path):
    import scipy.sparse as sp

    from dexml_hf.retrieval import RetrievalMemory

    train = _docs(30)
    rng = np.random.default_rng(3)
    matrix = sp.csr_matrix((rng.random((30, len(LABELS))) < 0.3).astype(np.float32))
    memory = RetrievalMemory(index.encode_queries(tiny_model, train), matrix, lam=0.3, k=5, temperature=0.1)
    index.attach_memory(memory)
    texts = _docs(17)
    path, _ = _write_input(tmp_path, "text", texts, None)
    q = index.encode_queries(tiny_model, texts)
    for use_memory in (True, False):
        out = tmp_path / f"o-{use_memory}.jsonl"
        predict_corpus(tiny_model, index, path, out, top_k=4, batch_size=4, use_memory=use_memory,
                       show_progress_bar=False)  # fmt: skip
        scores, top = index.search(q, 4, use_memory=use_memory)
        rows = _read(out)
        assert [r["label_ids"] for r in rows] == top.tolist()
        np.testing.assert_allclose([r["scores"] for r in rows], scores, rtol=1e-6, atol=1e-6)
    fused, plain = (_read(tmp_path / f"o-{u}.jsonl") for u in (True, False))
    assert [r["scores"] for r in fused] != [r["scores"] for r in plain]


def test_batches_are_bounded_and_parts_committed_one_by_one(tiny_model, index, tmp_path, monkeypatch):
    """The encoder never sees more than batch_size texts at once, and each part is its own committed file."""
    import dexml_hf.predict as predict_module

    path, _ = _write_input(tmp_path, "text", _docs(30), None)
    seen, committed = [], []
    forward = type(tiny_model).forward
    monkeypatch.setattr(
        type(tiny_model), "forward", lambda self, f, **kw: seen.append(len(f["input_ids"])) or forward(self, f, **kw)
    )
    write = predict_module._write_part
    monkeypatch.setattr(predict_module, "_write_part", lambda p, *a: committed.append(p.name) or write(p, *a))
    predict_corpus(tiny_model, index, path, tmp_path / "o.jsonl", top_k=2, batch_size=4, rows_per_part=12,
                   show_progress_bar=False)  # fmt: skip
    assert max(seen) <= 4 and sum(seen[-8:]) == 30  # the last 8 calls: 3 + 3 + 2 batches of the 3 parts
    assert committed == ["part-000000.jsonl", "part-000001.jsonl", "part-000002.jsonl"]


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from sentence_transformers import SentenceTransformer
    import dexml_hf.predict as p
    from dexml_hf.index import LabelIndex
    model_path, index_path, inp, out, kill_after, torn = sys.argv[1:7]
    count, write = [0], p._write_part

    def dying_write(path, cols, fmt, schema):
        if count[0] == int(kill_after):
            if torn == "1":  # die while a part's temp file is half written
                with open(path.with_name(path.name + ".tmp"), "w") as f:
                    f.write('{"row": 0, "lab')
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
        write(path, cols, fmt, schema)

    p._write_part = dying_write
    p.predict_corpus(SentenceTransformer(model_path, device="cpu"), LabelIndex.load(index_path), inp, out, top_k=3,
                     batch_size=4, rows_per_part=8, show_progress_bar=False)
    """
)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture()
def one_thread():
    """Torch on one thread, like the subprocesses (OMP_NUM_THREADS=1), so their bytes are comparable to ours."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("out_ext", "torn"), [(".jsonl", "0"), (".parquet", "1")])
def test_killed_run_resumes_to_identical_bytes(
    tiny_model_path, tiny_model, index, tmp_path, one_thread, out_ext, torn
):
    """SIGKILL after 3 committed parts (and, for parquet, inside a half-written 4th), then the same call again."""
    index.save(tmp_path / "idx")
    path, _ = _write_input(tmp_path, "text", _docs(50), None)
    out = tmp_path / f"resumed{out_ext}"
    argv = [str(tiny_model_path), str(tmp_path / "idx"), str(path), str(out), "3", torn]
    killed = subprocess.run([sys.executable, "-c", _KILLER, *argv], env=_env(), capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    work = tmp_path / f"resumed{out_ext}.partial"
    assert not out.exists() and len(list(work.glob(f"part-*{out_ext}"))) == 3
    assert (torn == "1") == any(work.glob("*.tmp"))

    def run(output):
        predict_corpus(tiny_model, LabelIndex.load(tmp_path / "idx"), path, output, top_k=3, batch_size=4,
                       rows_per_part=8, show_progress_bar=False)  # fmt: skip

    import dexml_hf.predict as predict_module

    written = []
    write = predict_module._write_part
    predict_module._write_part = lambda p, *a: written.append(p.name) or write(p, *a)
    try:
        run(out)
    finally:
        predict_module._write_part = write
    assert written == [f"part-00000{i}{out_ext}" for i in range(3, 7)]  # only the parts the killed run lacked
    whole = tmp_path / f"whole{out_ext}"
    run(whole)
    assert out.read_bytes() == whole.read_bytes() and not work.exists()


def test_a_different_job_refuses_to_resume_and_overwrite_restarts(tiny_model, index, tmp_path, monkeypatch):
    import dexml_hf.predict as predict_module

    path, _ = _write_input(tmp_path, "text", _docs(20), None)
    out = tmp_path / "o.jsonl"
    calls = [0]
    write = predict_module._write_part

    def failing_write(*args):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        write(*args)

    monkeypatch.setattr(predict_module, "_write_part", failing_write)
    with pytest.raises(KeyboardInterrupt):
        predict_corpus(tiny_model, index, path, out, top_k=2, batch_size=4, rows_per_part=8, show_progress_bar=False)
    monkeypatch.setattr(predict_module, "_write_part", write)
    with pytest.raises(UsageError, match=r"different job \(options changed\).*--overwrite"):
        predict_corpus(tiny_model, index, path, out, top_k=3, batch_size=4, rows_per_part=8, show_progress_bar=False)
    other = LabelIndex.from_texts(tiny_model, LABELS[::-1], label_ids=[f"L{i}" for i in range(len(LABELS))])
    with pytest.raises(UsageError, match=r"\(index changed\)"):
        predict_corpus(tiny_model, other, path, out, top_k=2, batch_size=4, rows_per_part=8, show_progress_bar=False)
    predict_corpus(tiny_model, index, path, out, top_k=3, batch_size=4, rows_per_part=8, overwrite=True,
                   show_progress_bar=False)  # fmt: skip
    _check_against_search(_read(out), tiny_model, index, _docs(20), 3)
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        predict_corpus(tiny_model, index, path, out, top_k=3, batch_size=4, show_progress_bar=False)


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("d.jsonl", '{"text": "a"}\n{"text": "b"}\n{"txt": "c"}\n', {}, r"d\.jsonl: line 3: no field 'text'"),
        ("d.jsonl", '{"text": "a"}\n{"text": "b",\n', {}, r"d\.jsonl: line 2: not valid JSON"),
        ("d.jsonl", '{"text": "a"}\n{"text": 3}\n', {}, r"d\.jsonl: line 2: field 'text' is int, expected str"),
        ("d.jsonl", '{"t": "a", "i": 1}\n{"t": "b", "i": "2"}\n', {"text_field": "t", "id_field": "i"}, "row 1: id"),
        ("d.csv", "id,text\n1,a\n2,b,extra\n", {}, r"d\.csv: line 3: more fields"),
        ("d.csv", "id,body\n1,a\n", {}, r"d\.csv: the header has no column 'text'"),
    ],
)
def test_bad_input_names_file_and_line_and_writes_nothing(
    tiny_model, index, tmp_path, name, content, options, message
):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    out = tmp_path / "o.parquet"
    with pytest.raises(DataError, match=message):
        predict_corpus(tiny_model, index, path, out, show_progress_bar=False, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_bad_parquet_column_and_null_text(tiny_model, index, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet: row 1: field 'text' is null"):
        predict_corpus(tiny_model, index, tmp_path / "d.parquet", tmp_path / "o.jsonl", show_progress_bar=False)
    with pytest.raises(DataError, match=r"no column 'body' \(has text\)"):
        predict_corpus(tiny_model, index, tmp_path / "d.parquet", tmp_path / "o.jsonl", text_field="body")
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.partial").exists()


def test_cli_corpus_end_to_end_and_one_line_errors(tiny_model_path, tiny_model, index, tmp_path, capsys):
    index.save(tmp_path / "idx")
    texts = _docs(10)
    path, options = _write_input(tmp_path, "jsonl", texts, list(range(10)))
    out = tmp_path / "o.parquet"
    base = ["predict", "--model", str(tiny_model_path), "--index", str(tmp_path / "idx")]
    argv = [*base, "--input", str(path), "--output", str(out), "--k", "4", "--batch_size", "3"]
    assert main([*argv, "--text_field", "body", "--id_field", "key"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    _check_against_search(_read(out), tiny_model, index, texts, 4, ids=list(range(10)))
    for extra, code, words in [
        (["--text_field", "body"], 2, "exists; pass --overwrite"),
        (["--overwrite", "true"], 1, "line 1: no field 'text'"),
        (["--overwrite", "true", "--text_field", "body", "--split", "test"], 2, "--split applies to XMC"),
        (["--overwrite", "true", "--text_field", "body", "--json", "true"], 2, "--json"),
        (["--overwrite", "true", "--text_field", "body", "some text"], 2, "texts or --input, not both"),
        (["--overwrite", "true", "--text_field", "body", "--rows_per_part", "0"], 2, "--rows_per_part must be a"),
    ]:
        assert main([*argv, *extra]) == code
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert main([*base, "--output", str(out)]) == 2 and "--input and --output go together" in capsys.readouterr().err
    assert (
        main([*base, "--text_field", "x", "t"]) == 2 and "--text_field applies to a corpus" in capsys.readouterr().err
    )
    _check_against_search(_read(out), tiny_model, index, texts, 4, ids=list(range(10)))  # untouched by the errors


@pytest.mark.slow
def test_two_process_launch_writes_the_one_process_bytes(tiny_model_path, tiny_model, index, tmp_path):
    index.save(tmp_path / "idx")
    path, options = _write_input(tmp_path, "jsonl", _docs(45), list(range(45)))
    args = ["-m", "dexml_hf.cli", "predict", "--model", str(tiny_model_path), "--index", str(tmp_path / "idx"),
            "--input", str(path), "--text_field", "body", "--id_field", "key", "--k", "3", "--batch_size", "4",
            "--rows_per_part", "8"]  # fmt: skip
    one = subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one.jsonl")], env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"),
        "--main_process_port",
        str(free_port()),
    ]
    two = subprocess.run([*launch, *args, "--output", str(tmp_path / "two.jsonl")], env=_env(), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1
    assert "process 0 of 2: 3 of 6 pending parts" in two.stderr and "process 1 of 2: 3 of 6" in two.stderr
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()


def test_cli_dataset_options_reach_the_reader(tiny_model_path, tiny_model, index, tmp_path, hub_repo_id, hf_cache,
                                              capsys):  # fmt: skip
    import datasets

    from dexml_hf.data import save_to_folder
    from dexml_hf.data.synthetic import generate_synthetic_xmc

    index.save(tmp_path / "idx")
    base = ["predict", "--model", str(tiny_model_path), "--index", str(tmp_path / "idx"), "--k", "2"]
    ds = generate_synthetic_xmc(num_labels=len(LABELS), num_train=20, num_test=6, seed=0)
    save_to_folder(ds, tmp_path / "ds")
    xmc = [*base, "--input", str(tmp_path / "ds"), "--output", str(tmp_path / "x.jsonl")]
    assert main([*xmc, "--split", "train", "--dataset_format", "lf"]) == 1  # the folder is not in LF's layout
    assert "no label (lbl.json.gz) file" in capsys.readouterr().err
    assert main([*xmc, "--split", "train", "--dataset_format", "hub", "--query_text_mode", "wikipedia"]) == 0
    texts = ds.query_texts("train", "wikipedia")
    _check_against_search(_read(tmp_path / "x.jsonl"), tiny_model, index, texts, 2, ids=ds.queries["train"]["uid"])

    main_texts, v2_texts = _docs(5), _docs(8)[3:]
    datasets.Dataset.from_dict({"text": main_texts}).push_to_hub(hub_repo_id, split="test")
    from huggingface_hub import HfApi

    HfApi().create_branch(hub_repo_id, branch="v2", repo_type="dataset")
    datasets.Dataset.from_dict({"text": v2_texts}).push_to_hub(hub_repo_id, split="test", revision="v2")
    hub = [*base, "--input", hub_repo_id, "--input_format", "hub", "--output", str(tmp_path / "h.jsonl")]
    assert main([*hub, "--dataset_revision", "v2"]) == 0
    _check_against_search(_read(tmp_path / "h.jsonl"), tiny_model, index, v2_texts, 2)
    assert main([*hub, "--overwrite", "true"]) == 0
    _check_against_search(_read(tmp_path / "h.jsonl"), tiny_model, index, main_texts, 2)


def test_a_saved_index_with_memory_mapped_labels_gives_the_same_output(tiny_model, index, tmp_path):
    """A loaded index holds its labels as Arrow columns: the same rows, and a changed label refuses to resume."""
    texts = _docs(30)
    corpus = tmp_path / "docs.txt"
    corpus.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    index.save(tmp_path / "idx")
    loaded = LabelIndex.load(tmp_path / "idx")
    out = tmp_path / "out.jsonl"
    predict_corpus(tiny_model, loaded, corpus, out, top_k=3, batch_size=8, show_progress_bar=False)
    _check_against_search(_read(out), tiny_model, index, texts, 3)

    partial = tmp_path / "partial.jsonl"
    state = {"n": 0}

    class Stop(Exception):
        pass

    def stop_after_first_part(*args, **kwargs):
        state["n"] += 1
        if state["n"] > 1:
            raise Stop
        return original(*args, **kwargs)

    import dexml_hf.predict as predict_module

    original = predict_module._write_part
    predict_module._write_part = stop_after_first_part
    try:
        with pytest.raises(Stop):
            predict_corpus(
                tiny_model, loaded, corpus, partial, top_k=3, batch_size=8, rows_per_part=8, show_progress_bar=False
            )
    finally:
        predict_module._write_part = original
    changed = LabelIndex.load(tmp_path / "idx")
    changed.update_labels(tiny_model, ["tax law and courts"], ["L5"])
    with pytest.raises(UsageError, match="index"):
        predict_corpus(
            tiny_model, changed, corpus, partial, top_k=3, batch_size=8, rows_per_part=8, show_progress_bar=False
        )


def test_cli_texts_mode_embeds_in_batches_of_batch_size(tiny_model_path, index, tmp_path, capsys, monkeypatch):
    """``--batch_size`` reaches the encoder for texts given as arguments too (it was accepted and ignored)."""
    from sentence_transformers import SentenceTransformer

    index.save(tmp_path / "idx")
    sizes = []
    original = SentenceTransformer.encode

    def spy(self, sentences, *args, **kwargs):
        sizes.append(kwargs.get("batch_size"))
        return original(self, sentences, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", spy)
    argv = ["predict", "--model", str(tiny_model_path), "--index", str(tmp_path / "idx"), "--batch_size", "3"]
    assert main([*argv, "tax law", "jazz", "bread"]) == 0
    assert sizes == [3]


def test_label_column_digest_depends_on_content_not_chunking(monkeypatch):
    """The resume fingerprint of an index's label columns: the same values in other chunks, offsets or string widths
    give the same digest; one changed value, a null, or another order do not."""
    import pyarrow as pa

    from dexml_hf import predict
    from dexml_hf.io import ArrowColumn

    monkeypatch.setattr(predict, "_DIGEST_BLOCK", 4)  # several blocks, and chunk edges inside and across them
    texts = [f"label {i} ü" * (i % 3) for i in range(11)]
    one = ArrowColumn(pa.array(texts))
    same = [
        ArrowColumn(pa.chunked_array([pa.array(texts[:3]), pa.array(texts[3:7]), pa.array(texts[7:])])),
        ArrowColumn(pa.array(texts, type=pa.large_string())),
        ArrowColumn(pa.array(["x", *texts]).slice(1)),  # a view with an offset into a larger buffer
    ]
    digest = predict._column_digest(one)
    assert all(predict._column_digest(c) == digest for c in same)
    changed = [texts[:5] + ["label 5 ü!"] + texts[6:], texts[:10] + [None], texts[::-1], texts[:10]]
    for values in changed:
        assert predict._column_digest(ArrowColumn(pa.array(values))) != digest
    ids = pa.array(list(range(11)), type=pa.int64())
    id_digest = predict._column_digest(ArrowColumn(ids))
    assert predict._column_digest(ArrowColumn(pa.chunked_array([ids[:6], ids[6:]]))) == id_digest
    assert predict._column_digest(ArrowColumn(pa.array([*range(10), 99]))) != id_digest
    # plain lists (indexes of formats 1 and 2) hash by blocks too, equal content equal digest
    assert predict._column_digest(list(texts)) == predict._column_digest(tuple(texts))
    assert predict._column_digest(list(texts)) != predict._column_digest(texts[:10])
