"""Every recipe parses into the dataclasses; YAML + CLI overrides; help text; no token in a config dump."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from dexml_hf.cli import main
from dexml_hf.errors import UsageError
from dexml_hf.factory import resolve_model_path
from dexml_hf.script_args import DataArguments, ModelArguments, parse_train_args, public_args_dict
from dexml_hf.training_args import DEXMLTrainingArguments

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)
ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))


def test_recipe_set_is_complete():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    for expected in [
        "eurlex-4k/distilbert.yaml",
        "lf-amazontitles-131k/distilbert.yaml",
        "lf-amazontitles-1.3m/distilbert.yaml",
        "lf-wikipedia-500k/distilbert.yaml",
        "eurlex-4k/distilbert-hnm.yaml",
        "lf-amazontitles-131k/distilbert-hnm.yaml",
        "lf-wikipedia-500k/distilbert-hnm.yaml",
        "eurlex-4k/distilbert-topk5.yaml",
        "eurlex-4k/distilbert-topk100.yaml",
        "eurlex57k/cpu.yaml",
        "stackexchange/cpu.yaml",
        "quickstart.yaml",
    ]:
        assert expected in names
    assert {p.stem for p in ACCELERATE_CONFIGS} >= {"single_gpu", "ddp", "cpu", "cpu_ddp"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_every_recipe_parses(recipe):
    raw = yaml.safe_load(recipe.read_text())
    model_args, data_args, train_args = parse_train_args(["--config", str(recipe)])
    assert isinstance(model_args, ModelArguments) and isinstance(data_args, DataArguments)
    assert isinstance(train_args, DEXMLTrainingArguments)
    # Every key of the file reached a dataclass with the file's value.
    merged = {}
    for obj in (model_args, data_args, train_args):
        merged.update({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    for key, value in raw.items():
        got = merged[key]
        got = getattr(got, "value", got)
        if key == "report_to":  # transformers turns "none" into []
            assert got in ([], [value], value)
        elif isinstance(value, float) or isinstance(got, float):
            assert float(got) == pytest.approx(float(value)), key
        else:
            assert got == value, key


# The paper's table (DESIGN.md §1): batch/GPU, label chunk, lr, tau, normalise, max len.
PAPER = {
    "eurlex-4k": (512, 4096, 5e-5, 0.05, True, 128),
    "lf-amazontitles-131k": (3000, 3000, 3e-4, 0.05, True, 32),
    "lf-amazontitles-1.3m": (3000, 3000, 3e-4, 1.0, False, 32),
    "lf-wikipedia-500k": (768, 512, 7e-5, 1.0, False, 128),
}


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_paper_recipes_match_the_paper(dataset):
    batch, chunk, lr, tau, normalize, max_len = PAPER[dataset]
    m, d, t = parse_train_args(["--config", str(ROOT / "recipes" / dataset / "distilbert.yaml")])
    assert (t.per_device_train_batch_size, t.label_chunk_size, t.learning_rate, t.temperature) == (
        batch,
        chunk,
        lr,
        tau,
    )
    assert (m.normalize, m.max_seq_length, m.pooling) == (normalize, max_len, "cls")
    assert m.model_name_or_path == "distilbert-base-uncased"
    assert (t.num_train_epochs, t.weight_decay, t.warmup_steps, t.fp16) == (100, 0.01, 0.1, True)
    assert str(getattr(t.lr_scheduler_type, "value", t.lr_scheduler_type)) == "linear"
    assert t.negatives == "all" and t.loss == "decoupled_softmax"


# Every paper recipe (DESIGN.md §1, the reference's configs): file -> (loss, negatives, lr per GPU, extra settings).
PAPER_VARIANTS = {
    "eurlex-4k/distilbert.yaml": ("decoupled_softmax", "all", 5e-5, {}),
    "lf-amazontitles-131k/distilbert.yaml": ("decoupled_softmax", "all", 3e-4, {}),
    "lf-amazontitles-1.3m/distilbert.yaml": ("decoupled_softmax", "all", 3e-4, {}),
    "lf-wikipedia-500k/distilbert.yaml": ("decoupled_softmax", "all", 7e-5, {}),
    # dist-de-hnm: mined after epoch 5 (0-based) and used from epoch 6, re-mined every 5 epochs, top-100 shortlist
    "eurlex-4k/distilbert-hnm.yaml": ("decoupled_softmax", "hard", 5e-5, {"num_hard_negatives": 1}),
    "lf-amazontitles-131k/distilbert-hnm.yaml": ("decoupled_softmax", "hard", 3e-4, {"num_hard_negatives": 1}),
    "lf-wikipedia-500k/distilbert-hnm.yaml": ("decoupled_softmax", "hard", 2e-5, {"num_hard_negatives": 5}),
    # dist-de-all_topk: k = 5, alpha = 2; k = 100 is the paper's R@100 loss
    "eurlex-4k/distilbert-topk5.yaml": ("soft_topk", "all", 5e-5, {"topk_k": 5, "topk_alpha": 2.0}),
    "eurlex-4k/distilbert-topk100.yaml": ("soft_topk", "all", 5e-5, {"topk_k": 100, "topk_alpha": 2.0}),
}
HARD_NEGATIVES = {"hard_negatives_start_epoch": 6, "mining_interval": 5, "shortlist_size": 100}


@pytest.mark.parametrize("name", sorted(PAPER_VARIANTS))
def test_paper_variants_follow_the_reference(name):
    loss, negatives, lr, extra = PAPER_VARIANTS[name]
    dataset = name.split("/")[0]
    batch, chunk, _, tau, normalize, max_len = PAPER[dataset]
    m, d, t = parse_train_args(["--config", str(ROOT / "recipes" / name)])
    assert (t.loss, t.negatives, t.learning_rate) == (loss, negatives, lr)
    assert (t.per_device_train_batch_size, t.label_chunk_size, t.temperature) == (batch, chunk, tau)
    assert (m.normalize, m.max_seq_length, m.pooling, m.model_name_or_path) == (
        normalize,
        max_len,
        "cls",
        "distilbert-base-uncased",
    )
    assert (t.num_train_epochs, t.weight_decay, t.warmup_steps, t.fp16) == (100, 0.01, 0.1, True)
    for key, value in {**extra, **(HARD_NEGATIVES if negatives == "hard" else {})}.items():
        assert getattr(t, key) == value, key
    # the reference's learning-rate rule: the configured rate is per GPU, the optimiser's is world_size x it
    assert t.scale_lr_with_world_size is True
    assert t.effective_learning_rate == pytest.approx(lr * t.world_size)
    # model selection on a validation split carved from train, never on test
    assert d.num_val_points is not None and 1000 <= d.num_val_points <= 5000
    assert d.eval_split == "validation" and t.test_split == "test"
    assert str(getattr(t.eval_strategy, "value", t.eval_strategy)) == "epoch"
    assert str(getattr(t.save_strategy, "value", t.save_strategy)) == "epoch"
    assert t.load_best_model_at_end is True and t.metric_for_best_model == "precision@1"
    # the reference's LF-Wikipedia-500K text preprocessing, for queries and labels alike
    wiki = dataset == "lf-wikipedia-500k"
    assert (t.query_text_mode == "wikipedia", t.label_text_mode == "wikipedia") == (wiki, wiki)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_no_recipe_selects_on_test(recipe):
    _, d, t = parse_train_args(["--config", str(recipe)])
    if t.load_best_model_at_end or d.eval_split is not None:
        assert d.eval_split not in (None, "test", t.test_split)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_configs_load(config):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(config))
    assert cfg.num_processes >= 1
    if config.stem == "cpu":
        assert cfg.use_cpu and cfg.num_processes == 1
    if config.stem == "ddp":  # the reference's 4 GPUs, and a line on changing the count
        assert cfg.num_processes == 4 and not cfg.use_cpu
        assert "--num_processes" in config.read_text()
    if config.stem == "cpu_ddp":  # 2 CPU processes through accelerate's multi-process (torchrun) launcher
        assert cfg.use_cpu and cfg.num_processes == 2 and cfg.mixed_precision == "no"
        assert str(getattr(cfg.distributed_type, "value", cfg.distributed_type)) == "MULTI_GPU"


def test_cli_overrides_win_and_yaml_numbers(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 5e-5\nnum_train_epochs: 3\npooling: cls\nnegatives: all\noutput_dir: a\n")
    m, d, t = parse_train_args(["--config", str(recipe), "--learning_rate", "1e-3", "--output_dir", "b"])
    assert t.learning_rate == 1e-3 and t.num_train_epochs == 3 and t.output_dir == "b"
    assert m.pooling == "cls" and t.negatives == "all"
    # "5e-5" is a *string* to YAML; it still becomes the float 5e-5.
    assert parse_train_args(["--config", str(recipe)])[2].learning_rate == 5e-5


def test_bad_recipes_are_rejected(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rate: 1e-4\nno_such_option: 3\n")
    with pytest.raises(UsageError, match=r"bad\.yaml.*no_such_option"):
        parse_train_args(["--config", str(recipe)])
    recipe.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        parse_train_args(["--config", str(recipe)])
    with pytest.raises(ValueError, match="pooling"):
        parse_train_args(["--pooling", "median"])
    with pytest.raises(ValueError, match="negatives"):
        parse_train_args(["--negatives", "some"])
    with pytest.raises(ValueError, match="logq_correction applies to the softmax losses"):
        parse_train_args(["--loss", "ova_bce", "--logq_correction", "true"])
    with pytest.raises(UsageError, match="abbreviat|unrecognized|hub_tok"):  # abbreviations are refused
        parse_train_args(["--hub_tok", "hf_abbreviated"])
    for argv, match in [
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps"),
        (["--learning_rate", "-1e-4"], "learning_rate"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
        (["--max_steps", "0", "--num_train_epochs", "0"], "nothing to train"),
        (["--loss", "soft_topk", "--topk_k", "10", "--per_device_train_batch_size", "4"], "topk_k=10"),
    ]:
        with pytest.raises(UsageError, match=match):
            parse_train_args(argv)


def test_topk_k_takes_a_number_or_num_pos_from_the_command_line():
    from dexml_hf.factory import loss_options

    _, _, args = parse_train_args(["--loss", "soft_topk", "--topk_k", "7"])
    assert args.topk_k == 7 and loss_options("soft_topk", args.topk_k)["max_positives"] == 7
    _, _, args = parse_train_args(["--loss", "soft_topk", "--topk_k", "num_pos"])
    assert args.topk_k == "num_pos"
    assert loss_options("soft_topk", args.topk_k) == {"k": "num_pos", "alpha": 2.0, "max_positives": None}
    for bad in ("0", "five", "-2"):
        with pytest.raises(UsageError, match="topk_k must be a positive integer or 'num_pos'"):
            parse_train_args(["--loss", "soft_topk", "--topk_k", bad])


def test_train_help_lists_every_option(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for cls in (ModelArguments, DataArguments, DEXMLTrainingArguments):
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                assert f"--{f.name}" in out, f.name
    assert "GENERATED" in out and "Softmax temperature" in out  # help texts of --dataset, --temperature
    assert "--config" in out


def test_no_token_in_config_dump():
    secret = "hf_verySecretTokenValue123"
    parsed = parse_train_args(["--hub_token", secret, "--push_to_hub", "--hub_model_id", "me/model"])
    assert parsed[2].hub_token == secret  # it is used ...
    dumped = yaml.safe_dump(public_args_dict(*parsed))  # ... but never written
    assert secret not in dumped and "me/model" in dumped

    from dexml_hf.commands.train import _command

    assert secret not in _command(["--hub_token", secret, "--x", "1"])
    assert secret not in _command([f"--hub_token={secret}"])


def test_bundled_model_resolves(minilm_path):
    assert Path(resolve_model_path("bundled:all-MiniLM-L6-v2")) == minilm_path
    assert resolve_model_path("distilbert-base-uncased") == "distilbert-base-uncased"
    with pytest.raises(UsageError, match="bundled models are"):
        resolve_model_path("bundled:other")
