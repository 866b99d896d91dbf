"""The checkpoint protocol: complete (negatives state + marker) before any push or rotation.

- a ``last-checkpoint/`` pushed with ``hub_strategy="checkpoint"`` (through the loopback Hub and the real
  ``huggingface_hub`` client) resumes to the weights of an uninterrupted run, and the extras stay out of the repo root;
- a run SIGKILLed while it writes the label cache of a checkpoint, with ``save_total_limit=1``, still leaves a
  complete checkpoint that resumes exactly;
- the rotation never keeps an incomplete checkpoint in place of a complete one;
- the restored label cache lands on the device it is asked for (the model's).
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch
from transformers import TrainerCallback

from dexml_hf import checkpoints
from dexml_hf.checkpoints import EXTRA_FILES, NEGATIVES_STATE, NegativesState
from dexml_hf.errors import DataError
from dexml_hf.negatives.label_cache import LabelEmbeddingCache
from dexml_hf.trainer import DEXMLTrainer
from tests.trainer.test_kill_resume import _cmd, _env, _load, _run
from tests.trainer.test_trainer import _args, _params, make_xmc

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


class _StopAt(TrainerCallback):
    """Ends training after ``step`` (its checkpoint is saved first), as a job that runs out of time would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class _CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def _model(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def test_pushed_last_checkpoint_resumes_exactly(tiny_model_path, tmp_path, hub_server, hub_repo_id):
    from huggingface_hub import HfApi, snapshot_download

    xmc = make_xmc()
    # the cache is refreshed at steps 0 and 3: the step after checkpoint-4 scores against the restored table
    kw = dict(negatives="all_cached", label_refresh_steps=3, max_steps=6)
    reference = _model(tiny_model_path)
    DEXMLTrainer(model=reference, args=_args(tmp_path / "ref", **kw), train_dataset=xmc).train()

    pushing = DEXMLTrainer(
        model=_model(tiny_model_path),
        args=_args(
            tmp_path / "pushed",
            save_strategy="steps",
            save_steps=2,
            push_to_hub=True,
            hub_strategy="checkpoint",
            hub_model_id=hub_repo_id,
            save_total_limit=2,
            **kw,
        ),
        train_dataset=xmc,
    )
    pushing.add_callback(_StopAt(4))
    pushing.train()

    files = set(HfApi().list_repo_files(hub_repo_id))
    assert {f"last-checkpoint/{name}" for name in EXTRA_FILES} <= files
    assert "last-checkpoint/trainer_state.json" in files and "model.safetensors" in files
    assert not {f for f in files if "/" not in f} & EXTRA_FILES, "checkpoint extras pushed to the repo root"
    assert not {p.name for p in (tmp_path / "pushed" / "out").iterdir()} & EXTRA_FILES
    # upstream's push and rotation were held back while it saved: its record of the arguments is still true
    saved = torch.load(tmp_path / "pushed" / "out" / "checkpoint-4" / "training_args.bin", weights_only=False)
    assert (saved.push_to_hub, saved.save_total_limit) == (True, 2)

    download = snapshot_download(hub_repo_id, allow_patterns=["last-checkpoint/*"], cache_dir=tmp_path / "dl")
    resumed = _model(tiny_model_path)
    trainer = DEXMLTrainer(model=resumed, args=_args(tmp_path / "resumed", **kw), train_dataset=xmc)
    counter = _CountSteps()
    trainer.add_callback(counter)
    trainer.train(resume_from_checkpoint=os.path.join(download, "last-checkpoint"))
    assert (trainer.state.global_step, counter.steps) == (6, 2)  # it continued from step 4
    assert trainer._cache.embeddings.device == resumed.device
    expected, got = _params(reference), _params(resumed)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_kill_while_writing_the_label_cache_with_save_total_limit_1_resumes(tiny_model_path, tmp_path):
    """Three processes: the reference, a run SIGKILLed inside the save of its second checkpoint (half of the
    label cache on disk), and a ``resume_from_checkpoint=true`` run that must find the first one and end equal."""
    mode, steps = "all_cached", ["--max-steps", "8", "--save-total-limit", "1"]
    _run(_cmd(tiny_model_path, tmp_path / "ref", mode, tmp_path / "ref.json", "--max-steps", "8"))

    killed = tmp_path / "killed"
    cmd = _cmd(tiny_model_path, killed, mode, tmp_path / "never.json", *steps, "--kill-while-saving", "8")
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (killed / "checkpoint-8" / f"{NEGATIVES_STATE}.safetensors").is_file()  # the kill hit that write
    assert not checkpoints.is_complete(killed / "checkpoint-8")
    assert checkpoints.is_complete(killed / "checkpoint-4"), sorted(p.name for p in killed.iterdir())

    _run(_cmd(tiny_model_path, killed, mode, tmp_path / "resumed.json", *steps, "--resume", "true"))
    (ref, ref_w), (res, res_w) = _load(tmp_path / "ref.json"), _load(tmp_path / "resumed.json")
    assert (res["global_step"], res["steps_run"]) == (8, 4)
    for name in ref_w:
        torch.testing.assert_close(res_w[name], ref_w[name], rtol=1e-5, atol=1e-6, msg=name)
    after = {s: v for s, v in ref["losses"].items() if int(s) > 4}
    assert len(after) == 4 and {s: res["losses"][s] for s in after} == pytest.approx(after, rel=1e-5)
    assert [p.name for p in checkpoints.checkpoint_folders(killed)] == ["checkpoint-8"]
    assert checkpoints.is_complete(killed / "checkpoint-8")


def _checkpoint(root, step, complete, ours=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if ours:
        checkpoints.unmark(folder)  # what _save_checkpoint does first
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        checkpoints.mark_complete(folder, step)
    return folder


def test_rotation_with_limit_1_keeps_the_complete_checkpoint(tmp_path):
    """A stale, incomplete checkpoint-6 (left by a killed run) is the newest by step (mtimes within a second:
    upstream orders by step); upstream's rotation alone keeps it and deletes the complete checkpoint-4 just written."""
    from transformers.trainer_utils import rotate_checkpoints as upstream

    for root in (tmp_path / "upstream", tmp_path / "ours"):
        _checkpoint(root, 2, complete=True)
        _checkpoint(root, 6, complete=False)
        _checkpoint(root, 4, complete=True)
    upstream(str(tmp_path / "upstream"), 1, use_mtime=True)
    assert [p.name for p in checkpoints.checkpoint_folders(tmp_path / "upstream")] == ["checkpoint-6"]
    checkpoints.rotate_checkpoints(tmp_path / "ours", 1, None, current=tmp_path / "ours" / "checkpoint-4")
    assert [p.name for p in checkpoints.checkpoint_folders(tmp_path / "ours")] == ["checkpoint-4"]


def test_rotation_never_deletes_a_checkpoint_another_trainer_wrote(tmp_path):
    """A newer checkpoint of a plain Trainer run in the same output_dir has no DEXML markers: not ours to delete as
    incomplete; upstream's rotation keeps the newest ``limit``."""
    _checkpoint(tmp_path, 2, complete=True)
    _checkpoint(tmp_path, 4, complete=True)
    _checkpoint(tmp_path, 6, complete=False, ours=False)
    checkpoints.rotate_checkpoints(tmp_path, 2, None, current=tmp_path / "checkpoint-4")
    assert [p.name for p in checkpoints.checkpoint_folders(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_rotation_keeps_everything_within_the_limit(tmp_path):
    for step, complete in ((2, True), (4, False), (6, True)):
        _checkpoint(tmp_path, step, complete)
    checkpoints.rotate_checkpoints(tmp_path, 3, None, current=tmp_path / "checkpoint-6")
    checkpoints.rotate_checkpoints(tmp_path, None, None, current=tmp_path / "checkpoint-6")
    assert len(checkpoints.checkpoint_folders(tmp_path)) == 3


def test_a_resaved_step_is_incomplete_until_written_again(tiny_model, tmp_path):
    """Resuming from checkpoint-2 re-saves checkpoint-4: its old marker goes before any of its files is rewritten."""
    folder = tmp_path / "out" / "checkpoint-4"
    folder.mkdir(parents=True)
    checkpoints.mark_complete(folder, 4)
    seen = []
    trainer = DEXMLTrainer(
        model=tiny_model,
        args=_args(tmp_path, negatives="all_cached", max_steps=4, save_strategy="steps", save_steps=4),
        train_dataset=make_xmc(),
    )
    save_model = trainer.save_model

    def spy(output_dir=None, _internal_call=False):
        seen.append(checkpoints.is_complete(folder))
        return save_model(output_dir, _internal_call=_internal_call)

    trainer.save_model = spy
    trainer.train()
    assert seen[0] is False and checkpoints.is_complete(folder)


@pytest.mark.parametrize("device", DEVICES)
def test_restored_label_cache_is_on_the_given_device(tmp_path, device):
    table = torch.randn(5, 3)
    checkpoints.save_negatives_state(tmp_path, NegativesState(cache_embeddings=table.to(device), cache_step=7))
    state = checkpoints.load_negatives_state(tmp_path, device=device)
    assert state.cache_embeddings.device.type == device and state.cache_step == 7
    torch.testing.assert_close(state.cache_embeddings.cpu(), table)
    cache = LabelEmbeddingCache(["a"] * 5, refresh_steps=3)
    cache.load_state_dict({"embeddings": state.cache_embeddings, "step": state.cache_step})
    assert cache.embeddings.device.type == device and not cache.is_stale(9) and cache.is_stale(10)


def test_missing_cache_array_is_refused(tmp_path):
    checkpoints.save_negatives_state(tmp_path, NegativesState(cache_embeddings=torch.ones(2, 2), cache_step=1))
    (tmp_path / f"{NEGATIVES_STATE}.safetensors").unlink()
    with pytest.raises(DataError, match="label-embedding cache is missing"):
        checkpoints.load_negatives_state(tmp_path)
