"""``torchrun`` smoke test of the reference trainer: 2 processes, gloo on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest

from propos_losses.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240


ARGS = "--max-samples 200 --epochs 2 --batch-size 64 --hidden-dim 32 --out-dim 16 --kmeans-n-init 1 --warmup-epochs 1 --psl-warmup-epochs 1 --queue-size 64 --device cpu --no-plots".split()


def _torchrun(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        *"-m torch.distributed.run --standalone --nproc_per_node 2 -m propos_losses.train".split(),
        *ARGS,
        *extra,
        "--output-dir",
        str(run_dir),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _epoch_losses(run_dir: Path) -> list:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["psa"], r["psl"]) for r in records if r["event"] == "epoch"]


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("torchrun") / "run"
    return run_dir, _torchrun(run_dir)


def test_torchrun_two_gloo_processes_train_and_agree_on_one_run(eager_run):
    run_dir, result = eager_run
    final_lines = [line for line in result.stdout.splitlines() if line.startswith("final NMI")]
    assert len(final_lines) == 2  # printed by rank 0 only: projector and backbone
    assert result.stdout.strip().splitlines()[-1] == final_lines[-1]

    state = load_checkpoint(run_dir)
    assert state.world_size == 2 and state.epoch == 2
    assert state.step == 2 * (200 // 64)
    # Every rank pushed into the queue; the gathered global batches (64 per step) filled it.
    assert int(state.criterion["psl.queue.fill"]) == 64
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["estep", "epoch", "estep", "epoch", "final"]
    assert records[3]["psl"] > 0.0 and records[3]["lambda_psl"] > 0.0
    assignments = (run_dir / "assignments.csv").read_text().splitlines()
    assert len(assignments) == 1 + 200
    labels = state.criterion["_extra_state"]["pseudo_labels"]
    assert labels.shape == (200,) and int(labels.min()) >= 0 and int(labels.max()) < 10
    # Rank 0's E-step labels were broadcast: the ranks' checkpointed E-step states agree (rank 0 saved
    # this one), and the log's pseudo-label sizes cover the whole data set.
    assert len(set(labels[:100].tolist()) & set(labels[100:].tolist())) > 1


def test_torchrun_with_a_compiled_m_step_trains_like_the_eager_run(eager_run, tmp_path):
    # DDP around torch.compile (aot_eager: no C++ compiler needed); the collectives of PSL and the
    # queue run inside the compiled graphs, and the epoch losses equal the eager run's.
    eager_dir, _ = eager_run
    compiled_dir = tmp_path / "compiled"
    _torchrun(compiled_dir, "--compile", "aot_eager")
    for compiled, eager in zip(_epoch_losses(compiled_dir), _epoch_losses(eager_dir), strict=True):
        for a, b in zip(compiled, eager):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (compiled, eager)
