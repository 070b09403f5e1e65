"""Command line of the reference trainer: ``propos-train`` / ``python -m propos_losses.train``.

Every field of :class:`~propos_losses.train.config.TrainConfig` has a flag (``lambda_psl`` -> ``--lambda-psl``).
Errors print one line on stderr (exit statuses and signals: docs/trainer.rst, "Errors").

Example:
    >>> main(["--preset", "nope"])  # prints "propos-train: error: unknown preset 'nope'; ..." on stderr
    2
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import json
import os
import shlex
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from propos_losses.distributed import (
    any_rank,
    barrier,
    broadcast_,
    broadcast_text,
    collective_device,
    destroy_process_group,
    get_rank,
    init_from_torchrun,
)
from propos_losses.train.checkpoint import Checkpoint, CheckpointError, config_fingerprint, load_checkpoint
from propos_losses.train.config import (
    RUN_ONLY_KEYS,
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config_file,
    resolve_config,
    setting_help,
    validate_config,
)
from propos_losses.train.data import DatasetError
from propos_losses.train.rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    OutputDirError,
    RunDirLock,
    check_name_lengths,
    check_output_dir,
    claim_run_dir,
    lock_run_dir,
    name_too_long,
    shorten_path,
)

__all__ = [
    "main",
    "build_parser",
    "EXIT_USER_ERROR",
    "EXIT_DIVERGED",
    "EXIT_DISK_FULL",
    "EXIT_FILE_SYSTEM_ERROR",
    "EXIT_INTERRUPTED",
]

#: Exit status for user errors (argparse uses the same).
EXIT_USER_ERROR = 2
#: Exit status when training diverged (a non-finite loss, an optimiser step that overflowed).
EXIT_DIVERGED = 3
#: Exit status when the disk (or quota) holding the run is full.
EXIT_DISK_FULL = 4
#: Exit status for any other file-system error while the run reads or writes its files (read-only, permissions).
EXIT_FILE_SYSTEM_ERROR = 5
#: Exit status after SIGINT (Ctrl-C); SIGTERM gives ``128 + 15``.
EXIT_INTERRUPTED = 128 + int(signal.SIGINT)
#: errno values of a full disk or quota.
_DISK_FULL = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
#: Files plot_run draws.
_PLOT_NAMES = ("metrics.png", "cluster_sizes.png")
#: Flags that control the run rather than set a TrainConfig field.
_RUN_FLAGS = ("config", "resume", "print_config", "stop_after", "no_plots", "quiet")


class _UserError(Exception):
    """Raised inside :func:`main` for errors reported without a traceback."""


class _Diverged(Exception):
    """Training produced non-finite values; reported with :data:`EXIT_DIVERGED`."""


_USER_ERRORS = (ConfigError, DatasetError, CheckpointError, OutputDirError, _UserError)


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
        else:
            kind = float if "float" in annotation else str
        settings.add_argument(
            _flag(field.name), dest=field.name, type=kind, metavar=field.name.upper(), help=setting_help(field.name)
        )
    return parser


def _timestamp() -> str:
    seconds = torch.tensor([int(time.time())], dtype=torch.int64, device=collective_device())
    broadcast_(seconds)  # every torchrun process must pick the same directory
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y%m%d-%H%M%S")


def _agree(error: Optional[Exception]) -> None:
    """Raise on every process when any failed (rank 0 alone claims and locks the run directory)."""
    failed = any_rank(error is not None)
    if error is not None:
        raise error
    if failed:
        raise _UserError("another process could not prepare the run directory (see rank 0's message)")


def _init_distributed(device: str) -> bool:
    """Join the ``torchrun`` process group when launched by it; returns whether we did."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    return init_from_torchrun(use_cuda=device == "cuda" or (device == "auto" and torch.cuda.is_available()))


def _final_lines(final: Dict[str, Any]) -> List[str]:
    lines = [
        f"final NMI {final[p + '_nmi']:.4f}  AMI {final[p + '_ami']:.4f}  ARI {final[p + '_ari']:.4f}  "
        f"ACC {final[p + '_acc']:.4f}  (k-means on target {p} features)"
        for p in ("projector", "backbone")
        if f"{p}_nmi" in final
    ]
    return lines or ["final: the data set has no labels; cluster assignments written to assignments.csv"]


def _config_json(config: TrainConfig) -> bytes:
    return (json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n").encode("utf-8")


def _unstarted_run_config(run_dir: Path) -> TrainConfig:
    """The settings of a run killed before its first checkpoint (its ``config.json``)."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(run_dir / CHECKPOINT_NAME)!r} and no {CONFIG_NAME}: {str(run_dir)!r} holds no run "
            f"to resume"
        )
    try:
        return config_from_dict(load_config_file(path))
    except ConfigError as exc:
        raise CheckpointError(f"cannot restart the run in {str(run_dir)!r}: {exc}") from None


def _check_config_json(run_dir: Path, config: TrainConfig, checkpoint: str) -> None:
    """A checkpoint resumes only the run whose ``config.json`` sits next to it."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return
    try:
        same = config_fingerprint(config_from_dict(load_config_file(path))) == config_fingerprint(config)
    except ConfigError:
        same = False
    if not same:
        raise CheckpointError(f"{checkpoint!r} and {str(path)!r} hold different settings: they are not one run")


def _header(config: TrainConfig, trainer: Any) -> str:
    dataset = trainer.dataset
    _, channels, height, width = dataset.images.shape
    classes = f"{dataset.num_classes} classes" if dataset.num_classes is not None else "unlabelled"
    return (
        f"run {config.output_dir}: preset {config.preset}, {dataset.name} ({len(dataset)} samples "
        f"{channels}x{height}x{width}, {classes}), method {config.method}, {config.epochs} epochs, "
        f"K={trainer.num_clusters}, device {trainer.device}, {torch.get_num_threads()} torch threads"
        f"{f', {trainer.world_size} processes' if trainer.world_size > 1 else ''}"
    )


@dataclasses.dataclass
class _Progress:
    """What an interrupted run has written (for the message that tells how to continue it)."""

    run_dir: Optional[Path] = None
    trainer: Any = None
    epochs: int = 0


def _divergence(exc: Exception, trainer: Any) -> Optional[str]:
    """The one-line report when ``exc`` from :meth:`Trainer.fit` means that training diverged, else ``None``.

    A non-finite loss, an optimiser step that overflowed, or any error while the weights are not finite.
    """
    if trainer is None:
        return None
    epoch = int(trainer.epoch) + 1  # the epoch in progress: fit counts it only once it is done
    if isinstance(exc, FloatingPointError):
        cause = f"non-finite loss in epoch {epoch}"
    else:
        finite = all(bool(torch.isfinite(p).all()) for p in trainer.online.parameters() if p.is_floating_point())
        if finite and not (isinstance(exc, RuntimeError) and "overflow" in str(exc)):
            return None
        detail = " ".join(str(exc).split())
        cause = f"non-finite {'weights' if not finite else 'optimiser step'} in epoch {epoch}: {detail}"
    return (
        f"training diverged ({cause}); lower --base-lr (this run has {trainer.config.base_lr:g}) and start a new "
        f"run; {_checkpoint_status(trainer.output_dir, kept=True)}"
    )


def _checkpoint_status(run_dir: Optional[Path], kept: bool = False) -> str:
    """What a run that stopped on an error left: its last checkpoint (and how to continue it), or nothing."""
    if run_dir is None:
        return "nothing was written"
    try:  # what is on disk now
        checkpoint = load_checkpoint(run_dir)
    except (CheckpointError, OSError):
        return f"no checkpoint was written in {shorten_path(run_dir)!r}"
    where = f"its last checkpoint (epoch {checkpoint.epoch}) in {shorten_path(run_dir)!r} is intact"
    if kept:
        return where
    return f"{where}: continue the run from it with: propos-train --resume {shlex.quote(str(run_dir))}"


def _file_system_error(exc: OSError, run_dir: Optional[Path]) -> tuple[int, str]:
    """Exit status and one-line message for an ``OSError`` raised while preparing or running a run."""
    if exc.errno == errno.ENAMETOOLONG:
        return EXIT_USER_ERROR, name_too_long(exc.filename if exc.filename is not None else str(exc))
    reason = exc.strerror or type(exc).__name__
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if isinstance(exc.errno, int) else "no errno"
    target = exc.filename if exc.filename is not None else run_dir
    what = f"cannot write {shorten_path(target)!r}" if target is not None else "file-system error"
    status = _checkpoint_status(run_dir)
    if exc.errno in _DISK_FULL:
        return EXIT_DISK_FULL, f"{what}: {reason} ({code}); free some space; {status}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the output directory writable again (the file system turned read-only or permissions changed)"
        return EXIT_FILE_SYSTEM_ERROR, f"{what}: {reason} ({code}); {fix}; {status}"
    return EXIT_FILE_SYSTEM_ERROR, f"{what}: {reason} ({code}); {status}"


def _resume_config(options: Dict[str, Any], overrides: Dict[str, Any], progress: _Progress) -> tuple:
    """``(config, run_dir, checkpoint)`` of ``--resume``; ``checkpoint`` is ``None`` for a run killed before its first."""
    if "config" in options:
        raise ConfigError("--config cannot be combined with --resume (the run's own config is used)")
    target = Path(options["resume"])
    checkpoint: Optional[Checkpoint] = None
    if target.is_dir() and not (target / CHECKPOINT_NAME).exists():
        saved, run_dir = _unstarted_run_config(target), target
    else:
        checkpoint = load_checkpoint(target)
        checkpoint.check_finite()  # a recomputed SHA-256 does not make NaN weights resumable
        try:
            saved = config_from_dict(checkpoint.config)
        except ConfigError as exc:
            raise CheckpointError(f"{checkpoint.path!r} is damaged: {exc}") from None
        run_dir = Path(checkpoint.path).parent
    for key, value in overrides.items():
        if key not in RUN_ONLY_KEYS and value != getattr(saved, key):
            raise ConfigError(
                f"cannot change {key} when resuming (checkpoint has {getattr(saved, key)!r}, got {value!r}); "
                f"only {list(RUN_ONLY_KEYS)} may change"
            )
    progress.run_dir = run_dir
    if "output_dir" in overrides and Path(overrides["output_dir"]).resolve() != run_dir.resolve():
        raise ConfigError(f"a resumed run continues in its own directory {str(run_dir)!r}; drop --output-dir")
    run_only = {key: overrides[key] for key in RUN_ONLY_KEYS if key in overrides and key != "output_dir"}
    try:
        config = validate_config(dataclasses.replace(saved, **run_only, output_dir=str(run_dir)))
    except ConfigError as exc:
        if checkpoint is None:
            raise
        raise CheckpointError(f"{checkpoint.path!r} is damaged: {exc}") from None
    if checkpoint is not None:
        _check_config_json(run_dir, config, checkpoint.path)
    return config, run_dir, checkpoint


def _run(args: argparse.Namespace, progress: _Progress) -> int:
    from propos_losses.train.trainer import Trainer

    options = vars(args)
    overrides = {k: v for k, v in options.items() if k not in _RUN_FLAGS}
    log = (lambda message: None) if options.get("quiet") else (lambda message: print(message, flush=True))
    checkpoint: Optional[Checkpoint] = None
    lock: Optional[RunDirLock] = None
    try:
        check_name_lengths([(_flag(key), options.get(key)) for key in ("resume", "config", "output_dir", "data_dir")])
        resuming = "resume" in options
        if resuming:
            config, run_dir, checkpoint = _resume_config(options, overrides, progress)
        else:
            file_values = load_config_file(options["config"]) if "config" in options else {}
            config = resolve_config(overrides.get("preset"), file_values=file_values, overrides=overrides)
            check_name_lengths([("--output-dir", config.output_dir), ("--data-dir", config.data_dir)])
        if options.get("print_config"):
            print(json.dumps(config_to_dict(config), indent=2, sort_keys=True))
            return 0
        if "stop_after" in options and options["stop_after"] < 1:
            raise ConfigError(f"--stop-after must be >= 1, got {options['stop_after']}")
        progress.epochs = config.epochs
        distributed = _init_distributed(config.device)
        trainer: Any = None
        try:
            error: Optional[Exception] = None
            if resuming:
                if get_rank() == 0:
                    try:
                        lock = lock_run_dir(run_dir)  # before reading the log: no other process may write it
                    except OutputDirError as exc:
                        error = exc
                _agree(error)
            if checkpoint is not None and checkpoint.is_complete(run_dir):
                if get_rank() == 0:
                    if not all((run_dir / name).is_file() for name in _PLOT_NAMES):  # stopped before drawing them
                        _draw_plots(run_dir, options, log)
                    log(f"the run in {run_dir} already finished all {config.epochs} epochs; nothing to do")
                return 0
            if not resuming:
                explicit = config.output_dir is not None
                run_dir = Path(config.output_dir) if config.output_dir is not None else Path("runs") / _timestamp()
                check_output_dir(run_dir, default_name=not explicit)  # early refusal; the claim below is atomic
                config = dataclasses.replace(config, output_dir=str(run_dir))
            # Data and settings are checked (Trainer.__init__) before the directory is touched.
            trainer = Trainer(
                config, run_dir, resume=checkpoint, log=log, progress_bar=False if options.get("quiet") else None
            )
            progress.trainer = trainer
            if not resuming:
                claimed = ""
                if get_rank() == 0:
                    try:
                        claimed_dir, lock = claim_run_dir(
                            run_dir,
                            lambda path: _config_json(dataclasses.replace(config, output_dir=str(path))),
                            exclusive_name=explicit,
                        )
                        claimed = str(claimed_dir)
                        progress.run_dir = claimed_dir
                    except OutputDirError as exc:
                        error = exc
                _agree(error)
                run_dir = Path(broadcast_text(claimed))
                trainer.use_output_dir(run_dir)
                config = trainer.config
                progress.run_dir = run_dir
            elif checkpoint is None and get_rank() == 0:
                (run_dir / METRICS_NAME).unlink(missing_ok=True)  # the log of the attempt that was killed
            barrier()
            if get_rank() == 0:
                log(_header(config, trainer))
                log(json.dumps(config_to_dict(config), sort_keys=True))
            if checkpoint is not None:
                step = checkpoint.steps_into_epoch
                within = f", step {step} of epoch {checkpoint.epoch + 1}" if step else ""
                log(f"resuming {checkpoint.path} at epoch {checkpoint.epoch}{within}")
            elif resuming:
                log(f"restarting the run in {run_dir} from the beginning (it was stopped before its first checkpoint)")
            try:
                result = trainer.fit(stop_after=options.get("stop_after"))
            except (FloatingPointError, RuntimeError, ValueError) as exc:
                diverged = None if isinstance(exc, _USER_ERRORS) else _divergence(exc, trainer)
                if diverged is None:
                    raise
                raise _Diverged(diverged) from None
            if get_rank() == 0 and result["final"] is not None:
                _draw_plots(run_dir, options, log)
                log(f"outputs in {run_dir}")
                for line in _final_lines(result["final"]):
                    print(line, flush=True)
            barrier()  # every process leaves together, after rank 0's outputs
            return 0
        finally:
            if distributed:
                # Free the DDP module (and the process group it holds) before the group is destroyed, not
                # at interpreter exit, where gloo's worker threads can abort the process (SIGABRT).
                progress.trainer = trainer = None
                gc.collect()
                destroy_process_group()
    except _USER_ERRORS as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception's text holds
        print(f"propos-train: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except _Diverged as exc:
        print(f"propos-train: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except OSError as exc:  # disk full, a read-only file system, a name too long: the last checkpoint is kept
        status, message = _file_system_error(exc, progress.run_dir)
        print(f"propos-train: error: {' '.join(message.split())}", file=sys.stderr)
        return status
    finally:
        if lock is not None:
            lock.release()


def _draw_plots(run_dir: Path, options: Dict[str, Any], log: Any) -> None:
    """Plots (unless ``--no-plots``) are a convenience: a failure to draw them is reported, the run still succeeds."""
    from propos_losses.train.plots import plot_run

    if options.get("no_plots"):
        return
    try:
        written = plot_run(run_dir)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        print(
            f"propos-train: warning: plots not drawn: {type(exc).__name__}: {' '.join(str(exc).split())}",
            file=sys.stderr,
        )
        return
    if written:
        log("plots: " + ", ".join(str(p) for p in written))


def _interrupt_message(signum: int, progress: _Progress) -> str:
    name = signal.Signals(signum).name
    run_dir = progress.run_dir
    if run_dir is None:
        return f"propos-train: interrupted by {name} before the run directory was created; nothing was written"
    command = "propos-train --resume " + shlex.quote(str(run_dir))
    try:  # what is on disk, whatever the moment of the signal
        checkpoint = load_checkpoint(run_dir)
    except CheckpointError:
        return f"propos-train: interrupted by {name} before the first checkpoint; start the run again with: {command}"
    saved, steps = checkpoint.epoch, checkpoint.steps_into_epoch
    epochs = checkpoint.config.get("epochs", progress.epochs)
    if saved >= epochs:
        return (
            f"propos-train: interrupted by {name} after all {saved} epochs were saved; finish the run with: {command}"
        )
    where = f"{saved} of {epochs} epochs" + (f" and {steps} steps of epoch {saved + 1}" if steps else "")
    return f"propos-train: interrupted by {name}; {where} are saved; continue with: {command}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``propos-train``; returns the exit status.

    SIGINT and SIGTERM checkpoint the run between two training steps (docs/trainer.rst, "Resume"), print
    the command that continues it and return ``128 + signal number`` (130, 143).

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when ``None``).

    Returns:
        0 on success, 2 on a user error (message on stderr), 130 / 143 when interrupted.

    Example:
        >>> main(["--epochs", "0"])  # prints "propos-train: error: epochs must be >= 1, got 0" on stderr
        2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message
        return int(exc.code or 0)
    progress = _Progress()

    def handle(signum: int, frame: Any) -> None:
        """Between training steps: stop after the step and checkpoint there; elsewhere: stop at once."""
        if progress.trainer is None or not progress.trainer.request_stop(signum):
            raise KeyboardInterrupt(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handle)
    try:
        return _run(args, progress)
    except KeyboardInterrupt as exc:  # from handle() or TrainingInterrupted: args[0] is the signal
        number = int(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else int(signal.SIGINT)
        if get_rank() == 0:
            print(_interrupt_message(number, progress), file=sys.stderr, flush=True)
        return 128 + number
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
