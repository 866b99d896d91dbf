"""One training run of the kill-and-resume test (``test_kill_resume.py``), in its own process.

``--pause-after STEP`` sleeps after each optimizer step past STEP (numerics untouched) so the test can SIGKILL the
run between a checkpoint and the end. ``--kill-while-saving STEP`` SIGKILLs the run from inside the save of
``checkpoint-STEP``, half-way through writing the negatives state (the label cache, the mined shortlists): the worst
moment of a save, after the Trainer's own files. ``--resume PATH`` continues from a checkpoint (``true``: the last
complete one). At the end the run writes its final weights and its evaluation metrics (P@k etc. on the test split)
to ``--result``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


class _Pause(TrainerCallback):
    """Counts the steps this process ran; sleeps after each step past ``after`` (when given)."""

    def __init__(self, after: int | None) -> None:
        self.after = after
        self.steps_run = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_run += 1
        if self.after is not None and state.global_step > self.after:
            time.sleep(1.0)


def _kill_while_saving(step: int) -> None:
    """Make the safetensors write of ``checkpoint-<step>`` leave half a file, then SIGKILL this process."""
    import safetensors.numpy

    save_file = safetensors.numpy.save_file

    def half_then_kill(arrays, filename, *args, **kwargs):
        if Path(filename).parent.name != f"checkpoint-{step}":
            return save_file(arrays, filename, *args, **kwargs)
        save_file(arrays, filename, *args, **kwargs)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    safetensors.numpy.save_file = half_then_kill


def main() -> None:
    from sentence_transformers import SentenceTransformer

    from dexml_hf.trainer import DEXMLTrainer
    from dexml_hf.training_args import DEXMLTrainingArguments
    from tests.trainer.test_trainer import make_xmc

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--pause-after", type=int, default=None)
    parser.add_argument("--kill-while-saving", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--save-total-limit", type=int, default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    if args.kill_while_saving is not None:
        _kill_while_saving(args.kill_while_saving)
    model = SentenceTransformer(args.model, device="cpu")
    training_args = DEXMLTrainingArguments(
        output_dir=args.output_dir,
        negatives=args.mode,
        per_device_train_batch_size=8,
        num_train_epochs=3,  # 48 queries / 8 = 6 steps an epoch, 18 steps
        max_steps=args.max_steps,
        save_total_limit=args.save_total_limit,
        learning_rate=5e-3,
        warmup_steps=2,
        save_strategy="steps",
        save_steps=4,
        eval_strategy="no",
        logging_steps=1,
        report_to="none",
        label_chunk_size=7,
        label_refresh_steps=3,  # the cache is rebuilt off the checkpoint grid
        mining_interval=1,
        hard_negatives_start_epoch=1,
        shortlist_size=6,
        num_hard_negatives=2,
        seed=3,
        data_seed=3,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    xmc = make_xmc()
    trainer = DEXMLTrainer(model=model, args=training_args, train_dataset=xmc, eval_dataset="test")
    counter = _Pause(args.pause_after)
    trainer.add_callback(counter)
    resume = True if args.resume == "true" else args.resume
    out = trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    state = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    torch.save({"weights": state}, args.result + ".pt")
    with open(args.result, "w") as f:
        json.dump(
            {"metrics": metrics, "global_step": out.global_step, "losses": losses, "steps_run": counter.steps_run}, f
        )


if __name__ == "__main__":
    main()
