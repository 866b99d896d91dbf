"""Bad input through the CLI: one line on stderr naming the file/field or option, exit 2 (usage) or 1 (data), no
traceback without --debug, and option values checked before anything is loaded."""

from __future__ import annotations

import gzip
import json

import pytest

from dexml_hf.cli import main

MISSING_MODEL = "/nonexistent/model/folder"  # never reached: the options are refused first


def _lf_folder(root, broken_line: str | None = None):
    """A tiny LF raw folder; ``broken_line`` replaces the second line of trn.json.gz."""
    root.mkdir()
    rows = [
        {"uid": str(i), "title": f"query {i}", "content": "", "target_ind": [i % 3], "target_rel": [1.0]}
        for i in range(4)
    ]
    lines = [json.dumps(r) for r in rows]
    if broken_line is not None:
        lines[1] = broken_line
    for name, content in (("trn.json.gz", lines), ("tst.json.gz", [json.dumps(r) for r in rows[:2]])):
        with gzip.open(root / name, "wt") as f:
            f.write("\n".join(content) + "\n")
    with gzip.open(root / "lbl.json.gz", "wt") as f:
        f.write("\n".join(json.dumps({"uid": str(j), "title": f"label {j}", "content": ""}) for j in range(3)) + "\n")
    return root


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line(err: str) -> None:
    assert err and len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv,code,needles",
    [
        (["train", "--gradient_accumulation_steps", "0"], 2, ["gradient_accumulation_steps"]),
        (["train", "--max_steps", "0", "--num_train_epochs", "0"], 2, ["nothing to train"]),
        (["train", "--learning_rate", "-0.1"], 2, ["learning_rate"]),
        (["train", "--per_device_train_batch_size", "0"], 2, ["per_device_train_batch_size"]),
        (["train", "--loss", "soft_topk", "--topk_k", "10", "--per_device_train_batch_size", "4"], 2, ["topk_k=10"]),
        (["train", "--hub_tok", "hf_x"], 2, ["--hub_tok"]),
        (["train", "--negatives", "every"], 2, ["negatives"]),
        (["evaluate", "--model", MISSING_MODEL, "--dataset", "synthetic", "--max_queries", "0"], 2, ["max_queries"]),
        (["evaluate", "--model", MISSING_MODEL, "--dataset", "synthetic", "--ks", "1,x"], 2, ["--ks"]),
        (["predict", "--model", MISSING_MODEL, "--index", "/nonexistent", "  "], 2, ["empty"]),
        (["predict", "--model", MISSING_MODEL, "--index", "/nonexistent", "text", "--k", "0"], 2, ["--k"]),
        (["convert", "/nonexistent/src"], 2, ["dst"]),
        (["no-such-command"], 2, ["no-such-command"]),
    ],
)
def test_options_refused_before_loading(argv, code, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got, err = _run([*argv, "--model_name_or_path", MISSING_MODEL] if argv[0] == "train" else argv, capsys)
    assert got == code, err
    _one_line(err)
    for needle in needles:
        assert needle in err


def test_malformed_dataset_in_evaluate_names_file_and_line(tmp_path, tiny_model_path, capsys):
    folder = _lf_folder(tmp_path / "lf", broken_line='{"uid": "1", "title": "q", "target_ind": [0], ')
    code, err = _run(["evaluate", "--model", str(tiny_model_path), "--dataset", str(folder)], capsys)
    assert code == 1
    _one_line(err)
    assert "trn.json.gz" in err and "line 2" in err
    with pytest.raises(ValueError, match="trn.json.gz"):  # --debug: the exception itself, with its traceback
        main(["evaluate", "--model", str(tiny_model_path), "--dataset", str(folder), "--debug"])


def test_missing_model_is_a_data_error(tmp_path, capsys):
    folder = _lf_folder(tmp_path / "lf")
    code, err = _run(["evaluate", "--model", str(tmp_path / "no-model"), "--dataset", str(folder)], capsys)
    assert code == 1
    _one_line(err)
    assert "no-model" in err


@pytest.mark.parametrize("damage", ["json", "version", "field", "labels_file", "safetensors"])
def test_corrupt_label_index_names_the_file(tmp_path, tiny_model, tiny_model_path, capsys, damage):
    from dexml_hf.index import LabelIndex

    index = LabelIndex.from_texts(tiny_model, ["a", "b", "c"])
    folder = index.save(tmp_path / "idx")
    config = folder / "label_index.json"
    if damage == "json":
        config.write_text("{not json")
        name = "label_index.json"
    elif damage in ("version", "field", "labels_file"):
        value = {
            "version": ("format_version", 999),
            "field": ("n_labels", "3"),
            "labels_file": ("labels_file", "../x"),
        }
        field, bad = value[damage]
        config.write_text(json.dumps({**json.loads(config.read_text()), field: bad}))
        name = "label_index.json"
    else:
        tensors = next(folder.glob("*.safetensors"))
        tensors.write_bytes(b"garbage")
        name = tensors.name
    code, err = _run(["predict", "--model", str(tiny_model_path), "--index", str(folder), "text"], capsys)
    assert code == 1
    _one_line(err)
    assert name in err


@pytest.mark.parametrize(
    "argv,env,needles",
    [
        (["--fsdp", "full_shard"], {}, ["fsdp:", "DDP"]),
        (["--deepspeed", "/nonexistent/ds_config.json"], {}, ["deepspeed:", "DDP"]),
        ([], {"ACCELERATE_USE_FSDP": "true"}, ["fsdp:"]),  # accelerate launch with an FSDP config
        ([], {"ACCELERATE_USE_DEEPSPEED": "true"}, ["deepspeed:"]),
        (["--negatives", "all", "--ddp_static_graph", "true"], {}, ["ddp_static_graph", "negatives='all'"]),
    ],
)
def test_unsupported_parallelism_refused(argv, env, needles, capsys, tmp_path, monkeypatch):
    """FSDP / DeepSpeed (flags or accelerate's environment) and a static DDP graph for 'all': one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = _run(["train", *argv, "--model_name_or_path", MISSING_MODEL], capsys)
    assert code == 2, err
    _one_line(err)
    for needle in needles:
        assert needle in err


def test_static_graph_is_accepted_outside_the_all_engine(tmp_path):
    from dexml_hf.training_args import DEXMLTrainingArguments

    args = DEXMLTrainingArguments(str(tmp_path), negatives="in_batch", ddp_static_graph=True, use_cpu=True)
    assert args.ddp_static_graph is True
