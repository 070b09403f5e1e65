"""End-to-end tests of the ``propos-train`` command line on a small digits subset."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propos_losses import defaults as D
from propos_losses.train.cli import EXIT_USER_ERROR, build_parser, main
from propos_losses.train.config import (
    PRESET_NAMES,
    PRESETS,
    ConfigError,
    TrainConfig,
    resolve_config,
    setting_help,
    validate_config,
)
from propos_losses.train.models import BACKBONE_NAMES
from propos_losses.train.optim import learning_rate_factor
from propos_losses.train.rundir import atomic_write_bytes

# Tiny but complete: 200 digits, 3 steps per epoch, small heads, one k-means restart.
TINY = (
    "--max-samples 200 --epochs 2 --batch-size 64 --hidden-dim 32 --out-dim 16 "
    "--kmeans-n-init 1 --warmup-epochs 1 --psl-warmup-epochs 1 --device cpu --no-plots"
).split()


def _records(run_dir: Path) -> List[Dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_propos_smoke_run_writes_outputs_and_prints_final_metrics_last(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("final NMI") and "ACC" in lines[-1] and "backbone" in lines[-1]
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "assignments.csv"):
        assert (run_dir / name).is_file(), name
    records = _records(run_dir)
    assert [r["event"] for r in records] == ["estep", "epoch", "estep", "epoch", "final"]
    final = records[-1]
    for prefix in ("backbone", "projector"):
        for metric in ("nmi", "ami", "ari", "acc"):
            assert -1.0 <= final[f"{prefix}_{metric}"] <= 1.0
    assignments = (run_dir / "assignments.csv").read_text().splitlines()
    assert assignments[0] == "index,label,cluster_backbone,cluster_projector,pseudo_label"
    assert len(assignments) == 1 + 200
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["method"] == "propos"


def test_psl_and_noise_switch_on_only_after_the_psl_warmup(tmp_path):
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--quiet"]) == 0
    epochs = [r for r in _records(run_dir) if r["event"] == "epoch"]
    assert (epochs[0]["lambda_psl"], epochs[0]["sigma"], epochs[0]["psl"]) == (0.0, 0.0, 0.0)
    preset = resolve_config("digits")
    assert epochs[1]["lambda_psl"] == preset.lambda_psl and epochs[1]["sigma"] == preset.sigma
    assert epochs[1]["psl"] > 0.0


def test_byol_method_keeps_psl_and_noise_off_for_the_whole_run(tmp_path):
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--method", "byol", "--quiet"]) == 0
    epochs = [r for r in _records(run_dir) if r["event"] == "epoch"]
    assert len(epochs) == 2
    assert all(r["lambda_psl"] == 0.0 and r["sigma"] == 0.0 and r["psl"] == 0.0 for r in epochs)
    assert all(r["loss"] == r["psa"] for r in epochs)
    assert "backbone_nmi" in _records(run_dir)[-1]


def test_config_file_overrides_preset_and_flags_override_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config_file = tmp_path / "settings.toml"
    config_file.write_text('preset = "mnist"\nlambda_psl = 0.3\nepochs = 5\n')
    assert main(["--config", str(config_file), "--epochs", "7", "--data-dir", str(tmp_path), "--print-config"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["preset"] == "mnist" and resolved["dataset"] == "mnist"
    assert resolved["lambda_psl"] == 0.3 and resolved["epochs"] == 7
    assert resolved["batch_size"] == PRESETS["mnist"]["batch_size"]
    assert [p.name for p in tmp_path.iterdir()] == ["settings.toml"]  # --print-config writes nothing


def test_paper_presets_read_their_values_from_the_defaults_module():
    config = resolve_config("cifar20", overrides={"data_dir": "unused"})
    assert (config.epochs, config.batch_size, config.temperature, config.lambda_psl, config.sigma) == (
        D.EPOCHS,
        D.BATCH_SIZE,
        D.TEMPERATURE,
        D.LAMBDA_PSL_CIFAR,
        D.SIGMA,
    )
    assert (config.base_momentum, config.hidden_dim, config.out_dim, config.warmup_epochs) == (
        D.BASE_MOMENTUM,
        D.HIDDEN_DIM,
        D.PROJECTION_DIM,
        D.WARMUP_EPOCHS,
    )
    assert config.lr == D.BASE_LR * D.BATCH_SIZE / D.LR_REFERENCE_BATCH
    assert config.final_momentum == D.FINAL_MOMENTUM  # cifar20_r18_propos.yml: momentum_increase true


def test_cifar10_preset_follows_the_authors_config():
    # cifar10_r18_propos.yml: batch_size 128 on num_devices 4; momentum_base 0.996, momentum_increase false.
    config = resolve_config("cifar10", overrides={"data_dir": "unused"})
    assert config.batch_size == 128 * 4
    assert config.base_momentum == config.final_momentum == 0.996
    assert config.lr == D.BASE_LR * 512 / D.LR_REFERENCE_BATCH
    assert (config.epochs, config.temperature, config.lambda_psl, config.sigma) == (
        D.EPOCHS,
        D.TEMPERATURE,
        D.LAMBDA_PSL_CIFAR,
        D.SIGMA,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "imagenet"], "unknown preset 'imagenet'"),
        (["--method", "simclr"], "method must be one of"),
        (["--compile", "tensorrt"], "compile must be one of"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--temperature", "0"], "temperature must be > 0"),
        (["--dataset", "mnist"], "needs --data-dir"),
        (["--batch-size", "512", "--max-samples", "100"], "batch_size (512) is larger than the data set (100 samples)"),
    ],
)
def test_bad_settings_exit_2_with_a_message_and_write_nothing(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--device", "cpu"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_flag_and_non_numeric_value_exit_2(capsys):
    assert main(["--no-such-flag"]) == EXIT_USER_ERROR
    assert main(["--epochs", "many"]) == EXIT_USER_ERROR
    assert "invalid int value" in capsys.readouterr().err


def test_config_file_with_unknown_key_or_bad_syntax_is_rejected(tmp_path, capsys):
    bad_key = tmp_path / "a.json"
    bad_key.write_text(json.dumps({"lamda_psl": 0.1}))
    assert main(["--config", str(bad_key), "--print-config"]) == EXIT_USER_ERROR
    assert "unknown configuration key(s) ['lamda_psl']" in capsys.readouterr().err
    bad_toml = tmp_path / "b.toml"
    bad_toml.write_text("epochs = = 3\n")
    assert main(["--config", str(bad_toml), "--print-config"]) == EXIT_USER_ERROR
    assert "is not valid TOML" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml")]) == EXIT_USER_ERROR
    assert "cannot read config file" in capsys.readouterr().err


def test_missing_and_truncated_mnist_files_exit_2_and_keep_existing_outputs(tmp_path, capsys):
    run_dir = tmp_path / "run"  # does not exist yet; a failed run must not create it
    argv = ["--preset", "mnist", "--device", "cpu", "--output-dir", str(run_dir), "--data-dir"]
    assert main(argv + [str(tmp_path / "nowhere")]) == EXIT_USER_ERROR
    assert "Traceback" not in capsys.readouterr().err
    data = tmp_path / "mnist"
    data.mkdir()
    header = b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(data / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(header + bytes(28 * 28 * 3))  # promises 10 images, holds 3
    with gzip.open(data / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10))
    assert main(argv + [str(data)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "Traceback" not in err
    assert not run_dir.exists()


def test_mnist_preset_smoke_run_on_synthetic_idx_files(tmp_path, capsys):
    """The mnist preset end to end (flat_cnn, handwriting augmentation, PSL after its warm-up)."""
    import numpy as np

    data = tmp_path / "mnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    n = 96
    images = (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 255
    labels = rng.integers(0, 10, n).astype(np.uint8)
    with gzip.open(data / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes())
    with gzip.open(data / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + labels.tobytes())
    run_dir = tmp_path / "run"
    argv = [
        "--preset",
        "mnist",
        "--data-dir",
        str(data),
        *"--epochs 2 --psl-warmup-epochs 1 --batch-size 32 --hidden-dim 32 --out-dim 16 --kmeans-n-init 1 --device cpu --no-plots --quiet --output-dir".split(),
        str(run_dir),
    ]
    assert main(argv) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["backbone"] == "flat_cnn" and saved["dataset"] == "mnist"
    epochs = [r for r in _records(run_dir) if r["event"] == "epoch"]
    assert epochs[0]["psl"] == 0.0 and epochs[1]["psl"] > 0.0
    assert epochs[1]["lambda_psl"] == PRESETS["mnist"]["lambda_psl"]
    assert "final NMI" in capsys.readouterr().out


def test_non_empty_output_dir_is_refused_and_left_untouched(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("earlier results")
    before = _snapshot(run_dir)
    assert main(TINY + ["--output-dir", str(run_dir)]) == EXIT_USER_ERROR
    assert "is not empty" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


def test_unreadable_checkpoint_exits_2_and_is_left_untouched(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before = _snapshot(run_dir)
    assert main(["--resume", str(run_dir)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "Traceback" not in err
    assert main(["--resume", str(tmp_path / "missing")]) == EXIT_USER_ERROR
    assert "no checkpoint at" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


@settings(max_examples=25, deadline=None)
@given(total=st.integers(1, 500), warmup_fraction=st.floats(0.0, 1.0))
def test_learning_rate_rises_linearly_then_decays_monotonically_to_zero(total, warmup_fraction):
    warmup = int(total * warmup_fraction)
    factors = [learning_rate_factor(step, total, warmup) for step in range(total)]
    assert all(0.0 <= f <= 1.0 for f in factors)
    assert all(math.isclose(factors[s], (s + 1) / warmup) for s in range(warmup))
    after = factors[warmup:]
    assert all(a >= b for a, b in zip(after, after[1:]))
    if after:
        assert after[0] == 1.0


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "x", b"data")
    assert target.read_bytes() == b"new contents"


def test_resolve_config_rejects_wrong_types_before_running():
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        resolve_config("digits", overrides={"epochs": "3"})
    with pytest.raises(ConfigError, match="sigma must be >= 0"):
        resolve_config("digits", overrides={"sigma": -1.0})


def test_dataset_without_a_preset_takes_the_preset_made_for_it():
    # It used to fall back to the digits preset (small_cnn, batch 32), which does badly on MNIST.
    config = resolve_config(overrides={"dataset": "mnist", "data_dir": "unused"})
    assert (config.preset, config.backbone) == ("mnist", "flat_cnn")
    assert resolve_config(overrides={"dataset": "folder", "data_dir": "unused"}).preset == "digits"  # none for folder


@pytest.mark.parametrize("value", ["", ["digits"], 3])
def test_an_empty_or_non_string_preset_is_an_error_not_the_digits_preset(value):
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config(file_values={"preset": value})


def test_compiled_m_step_trains_like_the_eager_one_and_may_change_on_resume(tmp_path, capsys):
    # aot_eager needs no C++ compiler: the same traced graphs as inductor, run by eager kernels.
    compiled, eager = tmp_path / "compiled", tmp_path / "eager"
    assert main(TINY + ["--output-dir", str(compiled), "--quiet", "--compile", "aot_eager", "--stop-after", "1"]) == 0
    assert json.loads((compiled / "config.json").read_text())["compile"] == "aot_eager"
    assert main(TINY + ["--output-dir", str(eager), "--quiet"]) == 0
    # The compile backend is a run-only setting: the run resumes eagerly.
    assert main(["--resume", str(compiled), "--compile", "none", "--quiet", "--no-plots"]) == 0
    first, second = _records(compiled), _records(eager)
    assert [r["event"] for r in first] == [r["event"] for r in second]
    for a, b in zip(first, second):
        if a["event"] == "epoch":
            assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a["loss"], b["loss"])


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="inductor needs a C++ compiler on the CPU"
)
def test_inductor_compiled_m_step_trains_through_the_psl_warm_up(tmp_path):
    # The first epoch has PSL off; inductor once returned that loss without its gradient graph.
    run_dir = tmp_path / "run"
    assert main(TINY + ["--output-dir", str(run_dir), "--quiet", "--compile", "inductor"]) == 0
    epochs = [r for r in _records(run_dir) if r["event"] == "epoch"]
    assert [r["lambda_psl"] > 0 for r in epochs] == [False, True]
    assert all(math.isfinite(r["loss"]) for r in epochs)


def test_every_setting_has_a_help_text_with_its_allowed_values(capsys):
    """The help of each flag is its TrainConfig field's metadata; choices come from the declared tuples."""
    helps = {action.dest: action.help for action in build_parser()._actions}
    for spec in dataclasses.fields(TrainConfig):
        assert helps[spec.name] == setting_help(spec.name) and len(setting_help(spec.name)) > 10, spec.name
        assert setting_help(spec.name) in (TrainConfig.__doc__ or ""), spec.name
    assert setting_help("backbone").endswith(f"(one of: {', '.join(BACKBONE_NAMES)})")
    assert setting_help("preset").endswith(f"(one of: {', '.join(PRESET_NAMES)})")
    assert main(["--help"]) == 0
    assert "--estep-init ESTEP_INIT" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown configuration key 'nope'"):
        setting_help("nope")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig) if f.metadata["choices"]])
def test_settings_with_choices_reject_other_values(name):
    message = "unknown preset 'nope'" if name == "preset" else rf"{name} must be one of \[.*\], got 'nope'"
    with pytest.raises(ConfigError, match=message):
        validate_config(dataclasses.replace(TrainConfig(), **{name: "nope"}))
    if name == "augmentation":
        assert validate_config(dataclasses.replace(TrainConfig(), augmentation=None)).augmentation is None
