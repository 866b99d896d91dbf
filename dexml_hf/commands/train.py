"""``dexml-hf train``: parse the recipe, build through the factory, train with ``DEXMLTrainer``, print.

    dexml-hf train --config recipes/eurlex57k/cpu.yaml --num_train_epochs 2
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m dexml_hf.cli train --config ...

Everything else (test evaluation before/after, label index, card, push) is the trainer's job, so a Python user of
``DEXMLTrainer`` gets exactly what this command does.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

HELP = "train a dual encoder from a recipe (dexml-hf train --help lists every option)"


def build_parser():
    from dexml_hf.script_args import build_train_parser

    return build_train_parser()


def main(argv: list[str]) -> int:
    from dexml_hf.script_args import parse_train_command

    model_args, data_args, training_args, run_args = parse_train_command(argv)
    if run_args.dry_run:
        print_effective_settings(model_args, data_args, training_args)
        return 0
    run_train(model_args, data_args, training_args, argv=argv)
    return 0


def print_effective_settings(model_args, data_args, training_args) -> None:
    """What a run of these arguments would use, without loading anything."""
    rows = {
        "model": model_args.model_name_or_path,
        "dataset": data_args.dataset,
        **training_args.effective_settings(),
        "label_chunk_size": training_args.label_chunk_size,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "selection": f"{training_args.metric_for_best_model} on {data_args.eval_split}"
        if training_args.load_best_model_at_end and data_args.eval_split
        else "the last step",
        "test_split": training_args.test_split,
        "output_dir": training_args.output_dir,
    }
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


def run_train(model_args, data_args, training_args, argv: list[str] | None = None):
    """Train, evaluate, save and (with ``push_to_hub``) push; returns the trainer."""
    import yaml

    from dexml_hf.factory import is_hub_id
    from dexml_hf.model_card import DEXMLModelCardData, format_metrics_table, paper_results
    from dexml_hf.script_args import public_args_dict
    from dexml_hf.trainer import DEXMLTrainer

    start = time.time()
    token = training_args.hub_token
    recipe = _recipe_of(argv)
    resume = _resume_value(training_args.resume_from_checkpoint)
    model = model_args.load(token=token)
    dataset = data_args.load(token=token, splits=(training_args.test_split, data_args.eval_split))
    main_process = training_args.process_index == 0
    if main_process:
        print(f"dataset {data_args.dataset}: {dataset}", flush=True)

    model.model_card_data = DEXMLModelCardData.from_card_data(model.model_card_data)
    card = model.model_card_data
    card.register_model(model)
    card.dataset_id = data_args.dataset if is_hub_id(data_args.dataset) else None
    card.dataset_name = dataset.name or Path(data_args.dataset).name
    card.pooling = model_args.pooling
    card.recipe = recipe
    card.train_command = _command(argv)
    card.reference_results = paper_results(recipe)

    trainer = DEXMLTrainer(model=model, args=training_args, train_dataset=dataset, eval_dataset=data_args.eval_split)
    trainer.train(resume_from_checkpoint=resume)
    if not trainer.is_world_process_zero():
        return trainer
    if trainer.test_metrics is not None:
        title = f"{dataset.name or data_args.dataset}: {training_args.test_split} split, exact search (%)"
        extra = (("dual encoder alone", trainer.dual_encoder_metrics),) if trainer.dual_encoder_metrics else ()
        table = format_metrics_table(trainer.test_metrics, trainer.baseline_metrics, extra_rows=extra)
        print(f"\n{title}\n{table}\n", flush=True)
    trainer.save_model()
    output_dir = Path(training_args.output_dir)
    config = public_args_dict(model_args, data_args, training_args)
    (output_dir / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
    print(f"saved model, label_index/ and README.md to {output_dir} ({time.time() - start:.0f} s in all)", flush=True)
    if training_args.push_to_hub:
        trainer.push_to_hub()
        print(f"pushed model, label index and card to {trainer.hub_model_id}", flush=True)
    return trainer


def _resume_value(value: str | None) -> str | bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return None
    return value


def _recipe_of(argv: list[str] | None) -> str | None:
    argv = argv or []
    for i, item in enumerate(argv):
        if item == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith("--config="):
            return item.split("=", 1)[1]
    return None


def _command(argv: list[str] | None) -> str | None:
    """The command that trained the model, every credential-like option's value masked."""
    from dexml_hf.script_args import is_secret

    if argv is None:
        return None
    shown, hide_next = [], False
    for item in argv:
        if hide_next:
            shown.append("***")
            hide_next = False
        elif item.startswith("--") and is_secret(item[2:].split("=", 1)[0]):
            shown.append(item.split("=", 1)[0] + "=***" if "=" in item else item)
            hide_next = "=" not in item
        else:
            shown.append(item)
    return "dexml-hf train " + " ".join(shlex.quote(x) for x in shown)
