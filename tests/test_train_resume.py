"""Checkpoint/resume of the reference trainer: bit-for-bit continuation on CPU."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from propos_losses.train.checkpoint import checkpoint_bytes, load_checkpoint
from propos_losses.train.cli import EXIT_USER_ERROR, main
from propos_losses.train.trainer import TIMING_KEYS

# PSL on in epoch 2 and a queue, so that noise, prototypes and queue state all matter.
TINY = (
    "--max-samples 200 --epochs 2 --batch-size 64 --hidden-dim 32 --out-dim 16 "
    "--kmeans-n-init 1 --warmup-epochs 1 --psl-warmup-epochs 1 --queue-size 96 --device cpu "
    "--no-plots --quiet"
).split()


#: What a resumed run must reproduce exactly.
CHECKPOINT_STATE_KEYS = ("online target criterion estep optimizer momentum rng epoch step log_lines scheduler").split()


def _log(run_dir: Path) -> List[Dict[str, Any]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _assert_same_tensors(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_one_epoch_plus_resume_equals_two_straight_epochs_bit_for_bit(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(TINY + ["--output-dir", str(straight)]) == 0
    assert main(TINY + ["--output-dir", str(resumed), "--stop-after", "1"]) == 0
    interrupted = load_checkpoint(resumed)
    assert interrupted.epoch == 1 and not (resumed / "assignments.csv").exists()
    assert main(["--resume", str(resumed), "--quiet", "--no-plots"]) == 0

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert int(a.criterion["psl.queue.fill"]) > 0  # the queue really was used
    for key in CHECKPOINT_STATE_KEYS:
        _assert_same_tensors(getattr(a, key), getattr(b, key), key)
    assert _log(straight) == _log(resumed)
    assert (straight / "assignments.csv").read_text() == (resumed / "assignments.csv").read_text()


def test_resume_with_warm_estep_and_automatic_psl_start_is_bit_for_bit(tmp_path):
    # Both keep state across epochs (the last E-step's centres; the agreement and the PSL switch).
    options = TINY + ["--epochs", "3", "--estep-init", "warm", "--psl-start", "auto", "--psl-agreement", "0.3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(options + ["--output-dir", str(straight)]) == 0
    assert main(options + ["--output-dir", str(resumed), "--stop-after", "2"]) == 0
    assert load_checkpoint(resumed).estep["cluster_centers"] is not None
    assert main(["--resume", str(resumed), "--quiet", "--no-plots"]) == 0
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    for key in ("online", "target", "criterion", "estep", "epoch"):
        _assert_same_tensors(getattr(a, key), getattr(b, key), key)
    log = _log(straight)
    assert log == _log(resumed)
    esteps = [r for r in log if r["event"] == "estep"]
    assert "pseudo_vs_cold_nmi" not in esteps[0] and "pseudo_vs_cold_nmi" in esteps[1]  # the first E-step is cold
    assert "pseudo_agreement" in esteps[1]


def test_resume_discards_log_lines_written_after_the_checkpoint(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(TINY + ["--output-dir", str(straight)]) == 0
    assert main(TINY + ["--output-dir", str(resumed), "--stop-after", "1"]) == 0
    with open(resumed / "metrics.jsonl", "a") as fh:  # as if killed during the second epoch's E-step
        fh.write(json.dumps({"event": "estep", "epoch": 1}) + "\n")
    assert main(["--resume", str(resumed / "checkpoint.pt"), "--quiet", "--no-plots"]) == 0
    assert _log(straight) == _log(resumed)


def test_resume_redoes_an_interrupted_final_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--epochs", "1"]) == 0
    complete_log, assignments = _log(run_dir), (run_dir / "assignments.csv").read_text()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join(lines[:-1]) + lines[-1][:10])  # torn final record
    (run_dir / "assignments.csv").unlink()
    assert main(["--resume", str(run_dir), "--quiet", "--no-plots"]) == 0
    assert _log(run_dir) == complete_log
    assert (run_dir / "assignments.csv").read_text() == assignments


def test_resume_refuses_changed_settings_and_leaves_the_run_untouched(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--stop-after", "1"]) == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert main(["--resume", str(run_dir), "--lambda-psl", "0.5"]) == EXIT_USER_ERROR
    assert "cannot change lambda_psl when resuming" in capsys.readouterr().err
    assert main(["--resume", str(run_dir), "--output-dir", str(tmp_path / "elsewhere")]) == EXIT_USER_ERROR
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert not (tmp_path / "elsewhere").exists()


def test_resume_accepts_its_own_output_dir_and_a_new_device(tmp_path):
    # Run-only settings may be repeated or changed on --resume; the run continues where it stopped.
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--stop-after", "1", "--quiet"]) == 0
    argv = ["--resume", str(run_dir), "--output-dir", str(run_dir), "--device", "cpu", "--quiet", "--no-plots"]
    assert main(argv) == 0
    assert load_checkpoint(run_dir).epoch == 2


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--epochs", "1"]) == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--no-plots"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_checkpoint_is_written_without_leftover_temporary_files(tmp_path):
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--stop-after", "1"]) == 0
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state.epoch == 1 and state.step == 3 and state.criterion["_extra_state"]["pseudo_labels"].shape == (200,)


def test_a_stop_requested_between_steps_checkpoints_mid_epoch_and_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    import signal

    from propos_losses.train.trainer import Trainer

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(TINY + ["--output-dir", str(straight)]) == 0
    original_step = Trainer._step

    def step_then_signal(self, *args, **kwargs):  # SIGTERM arrives during the first step of epoch 2
        lr = original_step(self, *args, **kwargs)
        if self.step == 4:
            assert self.request_stop(signal.SIGTERM)
        return lr

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_step", step_then_signal)
        assert main(TINY + ["--output-dir", str(resumed)]) == 143
    assert "1 of 2 epochs and 1 steps of epoch 2 are saved" in capsys.readouterr().err
    interrupted = load_checkpoint(resumed)
    assert (interrupted.epoch, interrupted.step, interrupted.mid_epoch["index"]) == (1, 4, 1)
    assert main(["--resume", str(resumed), "--quiet", "--no-plots"]) == 0

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    for key in CHECKPOINT_STATE_KEYS:
        _assert_same_tensors(getattr(a, key), getattr(b, key), key)
    assert _log(straight) == _log(resumed)
    assert (straight / "assignments.csv").read_text() == (resumed / "assignments.csv").read_text()


@pytest.mark.parametrize("old_format", [1, 2])
def test_a_checkpoint_of_an_earlier_release_is_refused_with_the_release_that_reads_it(tmp_path, capsys, old_format):
    old = tmp_path / "old"
    assert main(TINY + ["--output-dir", str(old), "--stop-after", "1"]) == 0
    state = load_checkpoint(old)
    state.format = old_format
    # Format 1 was the bare state (no digest, so nothing of it was verified); format 2 had the wrapper.
    content = checkpoint_bytes(state) if old_format == 2 else None
    if content is None:
        torch.save(state.to_dict(), old / "checkpoint.pt")
    else:
        wrapper = torch.load(io.BytesIO(content), weights_only=True)
        wrapper["format"] = 2
        torch.save(wrapper, old / "checkpoint.pt")
    before = (old / "checkpoint.pt").read_bytes()
    assert main(["--resume", str(old), "--quiet", "--no-plots"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"checkpoint format {old_format}" in err and ("0.1.0" if old_format == 1 else "0.1.x") in err
    assert (old / "checkpoint.pt").read_bytes() == before  # kept as it was
