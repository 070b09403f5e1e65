"""Command line of the reference trainer: ``propos-train`` / ``python -m propos_losses.train``.

With no arguments it trains the ``digits`` preset on scikit-learn's 8x8
digits, writes everything under ``./runs/<timestamp>/`` and prints the final
NMI / AMI / ARI / ACC last. Every field of
:class:`~propos_losses.train.config.TrainConfig` has a flag (``lambda_psl`` ->
``--lambda-psl``); ``--config FILE`` reads a JSON or TOML table of the same
names; explicit flags win over the file, which wins over the preset.

User errors (a bad flag value, missing or corrupt data, an unreadable
checkpoint, an output directory that holds another run) print one line on
stderr and exit with status 2, without a traceback and without touching
anything already written.

Example:
    >>> main(["--preset", "nope"])  # prints "propos-train: error: unknown preset 'nope'; ..." on stderr
    2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from propos_losses.distributed import all_reduce_sum_, broadcast_, get_rank
from propos_losses.train.config import (
    PRESET_NAMES,
    ConfigError,
    TrainConfig,
    config_to_dict,
    load_config_file,
    resolve_config,
    validate_config,
    config_from_dict,
)

__all__ = ["main", "build_parser", "EXIT_USER_ERROR"]

#: Exit status for user errors (argparse uses the same).
EXIT_USER_ERROR = 2
#: Settings that may differ between a run and its resumption.
_RESUMABLE_CHANGES = ("device", "output_dir")
_HELP = {
    "preset": f"one of {list(PRESET_NAMES)} (default digits)",
    "dataset": "digits | mnist | cifar10 | cifar20 | folder",
    "data_dir": "directory of the data files (mnist: IDX files; cifar: python pickles; folder: images)",
    "method": "propos | byol (BYOL = lambda_psl 0 and sigma 0 on the same code path)",
    "batch_size": "global batch size (split over torchrun processes); lr = base_lr * batch_size / 256",
    "device": "auto | cpu | cuda (auto: CUDA when available)",
    "backbone": "small_cnn | flat_cnn | resnet18 | resnet34",
    "psl_warmup_epochs": "epochs with PSL and PSA noise off (default: warmup_epochs)",
    "psl_start": "warmup | auto (auto: PSL from the first E-step whose labels agree with the previous ones, NMI >= psl_agreement)",
    "estep_init": "cold | warm (warm: the E-step's k-means starts from the previous E-step's centres)",
    "final_kmeans_n_init": "k-means restarts of the final evaluation",
    "psl_agreement": "NMI between successive E-steps' pseudo-labels that starts PSL under --psl-start auto",
    "num_clusters": "K of the E-step (default: number of classes)",
    "estep_features": "projector | backbone: target features clustered by the E-step",
    "output_dir": "run directory (default ./runs/<timestamp>); must be new or empty",
    "augmentation": "digits | mnist | color (default from the data set)",
    "optimizer": "sgd | lars",
    "target_buffers": "none | copy | ema: the target's BatchNorm statistics (none: its own, as BYOL)",
    "crop_min_scale": "smallest random-crop area fraction (default: the augmentation kind's)",
    "rotation_degrees": "rotation range +-degrees (default: the augmentation kind's)",
    "translate": "translation range as a fraction of the image size (default: the augmentation kind's)",
}


class _UserError(Exception):
    """Raised inside :func:`main` for errors reported without a traceback."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_optional_int(text: str) -> Optional[int]:
    return None if text.lower() in ("none", "null") else int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; config flags default to "not given" so that presets and files apply.

    Example:
        >>> build_parser().parse_args(["--epochs", "3"]).epochs
        3
    """
    parser = argparse.ArgumentParser(
        prog="propos-train",
        description="Train ProPos (or the BYOL baseline) with the k-means EM loop and report clustering metrics.",
        argument_default=argparse.SUPPRESS,
    )
    run = parser.add_argument_group("run control")
    run.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (flag names with underscores)")
    run.add_argument("--resume", metavar="DIR_OR_FILE", help="continue the run whose checkpoint is in DIR (or FILE)")
    run.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    run.add_argument("--stop-after", type=int, metavar="EPOCH", help="stop after this epoch, keeping a checkpoint")
    run.add_argument("--no-plots", action="store_true", help="do not draw plots at the end")
    run.add_argument("--quiet", action="store_true", help="print only the final metrics")
    settings = parser.add_argument_group("settings (defaults: preset, then propos_losses.defaults)")
    for field in dataclasses.fields(TrainConfig):
        annotation = str(field.type)
        if "int" in annotation:
            kind: Any = _parse_optional_int if annotation.startswith("Optional") else int
        elif "float" in annotation:
            kind = float
        else:
            kind = str
        settings.add_argument(_flag(field.name), dest=field.name, type=kind, metavar=field.name.upper(),
                              help=_HELP.get(field.name))
    return parser


def _collective_device() -> torch.device:
    """NCCL only reduces CUDA tensors; gloo (and no process group) takes CPU tensors."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _timestamp() -> str:
    seconds = torch.tensor([int(time.time())], dtype=torch.int64, device=_collective_device())
    broadcast_(seconds)  # every torchrun process must pick the same directory
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y%m%d-%H%M%S")


def _check_new_output_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise _UserError(f"output directory {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise _UserError(
            f"output directory {str(path)!r} is not empty; choose a new --output-dir or continue it with --resume {path}"
        )


def _barrier() -> None:
    # An all-reduce is a barrier; keeps torch.distributed behind the library's helpers.
    all_reduce_sum_(torch.zeros(1, device=_collective_device()))


def _init_distributed(device: str) -> bool:
    """Join the ``torchrun`` process group when launched by it; returns whether we did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def _final_lines(final: Dict[str, Any]) -> List[str]:
    lines = []
    for prefix, where in (("projector", "target projector"), ("backbone", "target backbone")):
        if f"{prefix}_nmi" in final:
            lines.append(
                f"final NMI {final[prefix + '_nmi']:.4f}  AMI {final[prefix + '_ami']:.4f}  "
                f"ARI {final[prefix + '_ari']:.4f}  ACC {final[prefix + '_acc']:.4f}  (k-means on {where} features)"
            )
    if not lines:
        lines.append("final: the data set has no labels; cluster assignments written to assignments.csv")
    return lines


def _is_complete(run_dir: Path, state: Dict[str, Any]) -> bool:
    """A finished run has its final record right after the checkpoint's log lines, and its assignments."""
    from propos_losses.train.plots import read_metrics
    from propos_losses.train.trainer import ASSIGNMENTS_NAME, METRICS_NAME

    try:
        records = read_metrics(run_dir / METRICS_NAME)
    except ValueError:  # a torn last line: the final evaluation did not finish
        return False
    return (
        len(records) == state["log_lines"] + 1
        and records[-1].get("event") == "final"
        and (run_dir / ASSIGNMENTS_NAME).is_file()
    )


def _run(args: argparse.Namespace) -> int:
    from propos_losses.train.trainer import (
        CONFIG_NAME,
        CheckpointError,
        OutputDirError,
        Trainer,
        atomic_write_bytes,
        load_checkpoint,
    )
    from propos_losses.train.data import DatasetError

    options = vars(args)
    run_keys = ("config", "resume", "print_config", "stop_after", "no_plots", "quiet")
    overrides = {k: v for k, v in options.items() if k not in run_keys}
    log = (lambda message: None) if options.get("quiet") else (lambda message: print(message, flush=True))
    resume_state: Optional[Dict[str, Any]] = None
    try:
        if "resume" in options:
            resume_state = load_checkpoint(options["resume"])
            saved = config_from_dict(resume_state["config"])
            if "config" in options:
                raise ConfigError("--config cannot be combined with --resume (the run's own config is used)")
            for key, value in overrides.items():
                if key not in _RESUMABLE_CHANGES and value != getattr(saved, key):
                    raise ConfigError(
                        f"cannot change {key} when resuming (checkpoint has {getattr(saved, key)!r}, got {value!r}); "
                        f"only {list(_RESUMABLE_CHANGES)} may change"
                    )
            run_dir = Path(resume_state["path"]).parent
            if "output_dir" in overrides and Path(overrides["output_dir"]).resolve() != run_dir.resolve():
                raise ConfigError(f"a resumed run continues in its own directory {str(run_dir)!r}; drop --output-dir")
            config = validate_config(dataclasses.replace(saved, device=overrides.get("device", saved.device),
                                                         output_dir=str(run_dir)))
        else:
            file_values = load_config_file(options["config"]) if "config" in options else {}
            config = resolve_config(overrides.get("preset"), file_values=file_values, overrides=overrides)
        if options.get("print_config"):
            print(json.dumps(config_to_dict(config), indent=2, sort_keys=True))
            return 0
        if "stop_after" in options and options["stop_after"] < 1:
            raise ConfigError(f"--stop-after must be >= 1, got {options['stop_after']}")
        distributed = _init_distributed(config.device)
        try:
            if resume_state is not None:
                if resume_state["epoch"] >= config.epochs and _is_complete(Path(config.output_dir), resume_state):
                    log(f"the run in {config.output_dir} already finished all {config.epochs} epochs; nothing to do")
                    return 0
                run_dir = Path(config.output_dir)
            else:
                run_dir = Path(config.output_dir or Path("runs") / _timestamp())
                config = dataclasses.replace(config, output_dir=str(run_dir))
                _check_new_output_dir(run_dir)
            if get_rank() == 0:
                log(json.dumps(config_to_dict(config), sort_keys=True))
            # Data and settings are checked (Trainer.__init__) before the directory is touched.
            trainer = Trainer(config, run_dir, resume=resume_state, log=log)
            _barrier()
            if get_rank() == 0 and resume_state is None:
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(run_dir / CONFIG_NAME,
                                   (json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n").encode())
            _barrier()
            if resume_state is not None:
                log(f"resuming {resume_state['path']} at epoch {resume_state['epoch']}")
            result = trainer.fit(stop_after=options.get("stop_after"))
            if get_rank() == 0 and result["final"] is not None:
                if not options.get("no_plots"):
                    from propos_losses.train.plots import plot_run

                    written = plot_run(run_dir)
                    if written:
                        log("plots: " + ", ".join(str(p) for p in written))
                log(f"outputs in {run_dir}")
                for line in _final_lines(result["final"]):
                    print(line, flush=True)
            return 0
        finally:
            if distributed:
                torch.distributed.destroy_process_group()
    except (ConfigError, DatasetError, CheckpointError, OutputDirError, _UserError) as exc:
        print(f"propos-train: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``propos-train``; returns the exit status.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when ``None``).

    Returns:
        0 on success, 2 on a user error (message on stderr).

    Example:
        >>> main(["--epochs", "0"])  # prints "propos-train: error: epochs must be >= 1, got 0" on stderr
        2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message
        return int(exc.code or 0)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("propos-train: interrupted; resume with --resume <run directory>", file=sys.stderr)
        return 130
