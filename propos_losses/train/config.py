"""Training configuration and presets of the reference trainer, in one place.

Precedence, lowest first: the paper's defaults (:mod:`propos_losses.defaults`), the preset
table :data:`PRESETS`, a ``--config`` file (JSON or TOML), then explicit command-line flags.

>>> cfg = resolve_config("digits", overrides={"epochs": 3})
>>> cfg.dataset, cfg.epochs, cfg.method
('digits', 3, 'propos')
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from propos_losses import PSA, PSL, EStep, ProPosLoss
from propos_losses import defaults as D
from propos_losses.train.augment import AUGMENTATION_KINDS
from propos_losses.train.data import DATASET_NAMES
from propos_losses.train.models import BACKBONE_NAMES

__all__ = [
    "ConfigError",
    "TrainConfig",
    "PRESETS",
    "PRESET_NAMES",
    "RUN_ONLY_KEYS",
    "resolve_config",
    "setting_help",
    "load_config_file",
    "validate_config",
    "config_to_dict",
    "config_from_dict",
    "resolve_device",
    "augmentation_settings",
    "build_criterion",
    "build_estep",
    "check_batch_split",
]


class ConfigError(ValueError):
    """A user error in the configuration (bad flag value, unknown preset or key)."""


# What the two gray-scale presets share (how they were tuned: docs/trainer.rst, "How the presets were tuned").
_GRAY: Dict[str, Any] = {
    "optimizer": "sgd",
    "estep_every": 1,
    "queue_size": 0,
    "weight_decay": 2.5e-4,
    "base_momentum": 0.99,
    "lambda_psl": 1.0,
    "hidden_dim": 512,
    "out_dim": 64,
    "kmeans_n_init": 3,
}
# The cifar presets: the authors' configs (docs/trainer.rst), the paper's lambda_psl, PSL after the lr warm-up.
_CIFAR: Dict[str, Any] = {"backbone": "resnet18", "lambda_psl": D.LAMBDA_PSL_CIFAR, "psl_warmup_epochs": None}

#: Preset table: only the fields that differ from :class:`TrainConfig`'s defaults (the library's, docs/trainer.rst).
PRESETS: Dict[str, Dict[str, Any]] = {
    "digits": dict(
        _GRAY,
        dataset="digits",
        backbone="tiny_cnn",
        epochs=60,
        batch_size=32,
        base_lr=0.8,
        warmup_epochs=5,
        psl_warmup_epochs=20,
    ),
    "mnist": dict(
        _GRAY,
        dataset="mnist",
        backbone="flat_cnn",
        epochs=25,
        batch_size=128,
        base_lr=0.2,
        warmup_epochs=1,
        psl_warmup_epochs=5,
    ),
    "cifar10": dict(_CIFAR, dataset="cifar10", batch_size=512, final_momentum=0.996),
    "cifar20": dict(_CIFAR, dataset="cifar20"),
}
PRESET_NAMES: Tuple[str, ...] = tuple(PRESETS)


def _setting(default: Any, text: str, *, choices: Optional[Tuple[str, ...]] = None, run_only: bool = False) -> Any:
    """A :class:`TrainConfig` field whose metadata hold its help text, allowed values and run-only mark."""
    return field(default=default, metadata={"help": text, "choices": choices, "run_only": run_only})


@dataclass
class TrainConfig:
    """Every setting of a training run (one flag per field, ``--lambda-psl`` for ``lambda_psl``).

    Each field's metadata hold its help text, allowed values and run-only mark (:func:`setting_help`).

    Example:
        >>> TrainConfig().kmeans_n_init == D.KMEANS_N_INIT
        True
    """

    preset: str = _setting("digits", "table of settings applied before --config and the flags", choices=PRESET_NAMES)
    dataset: str = _setting("digits", "data set; all but digits read --data-dir", choices=DATASET_NAMES)
    data_dir: Optional[str] = _setting(
        None,
        "directory of the data files (mnist: IDX files; cifar: python pickles; folder: images, in one sub-folder per class when labelled)",
    )
    max_samples: Optional[int] = _setting(None, "use only the first n images (smoke tests); none: all")
    method: str = _setting(
        "propos", "byol: lambda_psl 0 and sigma 0 for the whole run, on the same code path", choices=("propos", "byol")
    )
    epochs: int = _setting(D.EPOCHS, "training epochs")
    batch_size: int = _setting(D.BATCH_SIZE, "global batch size (split over torchrun processes)")
    seed: int = _setting(0, "seed of the initialisation, data order, augmentations and k-means")
    device: str = _setting("auto", "auto: CUDA when available", choices=("auto", "cpu", "cuda"), run_only=True)
    backbone: str = _setting("resnet18", "encoder network", choices=BACKBONE_NAMES)
    hidden_dim: int = _setting(D.HIDDEN_DIM, "hidden width of the projector and predictor")
    out_dim: int = _setting(
        D.PROJECTION_DIM, "output width of the projector and predictor (the features of PSL and PSA)"
    )
    augmentation: Optional[str] = _setting(
        None, "augmentation kind; none: digits/mnist for those data sets, color otherwise", choices=AUGMENTATION_KINDS
    )
    crop_min_scale: Optional[float] = _setting(
        None, "smallest random-crop area fraction; none: the augmentation kind's"
    )
    rotation_degrees: Optional[float] = _setting(None, "rotation range in +- degrees; none: the augmentation kind's")
    translate: Optional[float] = _setting(
        None, "translation range as a fraction of the image size; none: the augmentation kind's"
    )
    optimizer: str = _setting(
        "sgd", "SGD with momentum, or LARS (layer-wise trust ratio) around it", choices=("sgd", "lars")
    )
    base_lr: float = _setting(D.BASE_LR, "learning rate for a batch of 256; scaled linearly with batch_size")
    weight_decay: float = _setting(D.WEIGHT_DECAY, "L2 weight decay (with LARS: not of biases and BatchNorm)")
    sgd_momentum: float = _setting(D.SGD_MOMENTUM, "momentum of SGD")
    predictor_lr_multiplier: float = _setting(D.PREDICTOR_LR_MULTIPLIER, "the predictor's learning rate over the lr")
    warmup_epochs: int = _setting(D.WARMUP_EPOCHS, "epochs of per-step linear learning-rate warm-up")
    psl_warmup_epochs: Optional[int] = _setting(
        D.PSL_START, "epochs with PSL and PSA noise off; none: warmup_epochs (the paper, the cifar presets)"
    )
    psl_start: str = _setting(
        "warmup",
        "warmup: PSL from epoch psl_warmup_epochs on; auto: from the first E-step whose pseudo-labels agree "
        "with the previous E-step's with NMI >= psl_agreement",
        choices=("warmup", "auto"),
    )
    psl_agreement: float = _setting(D.PSL_AUTO_AGREEMENT, "NMI of successive E-steps that starts PSL under auto")
    psl_pairing: str = _setting(
        D.PSL_PAIRING,
        "cross: each view's online prototypes against the other view's target prototypes (the authors' code); "
        "same: against the same view's",
        choices=("cross", "same"),
    )
    lambda_psl: float = _setting(D.LAMBDA_PSL, "weight of PSL in L = L_psa + lambda_psl L_psl (Eq. 12)")
    sigma: float = _setting(D.SIGMA, "standard deviation of the PSA positive sampling noise (Eq. 9)")
    temperature: float = _setting(D.TEMPERATURE, "tau of PSL (Eq. 4)")
    num_clusters: Optional[int] = _setting(None, "K of the E-step; none: number of classes of the data set")
    estep_every: int = _setting(D.ESTEP_EVERY, "E-step (k-means pseudo-labels) every this many epochs")
    estep_features: str = _setting(
        "projector",
        "target features the E-step clusters: projector outputs (paper) or backbone",
        choices=("projector", "backbone"),
    )
    queue_size: int = _setting(0, "slots of the PSL memory queue; 0: no queue")
    base_momentum: float = _setting(D.BASE_MOMENTUM, "m_0 of the target's cosine momentum schedule (Eq. 11)")
    final_momentum: float = _setting(D.FINAL_MOMENTUM, "target momentum at the last step")
    target_buffers: str = _setting(
        "none",
        "the target's BatchNorm statistics: none: its own (BYOL); copy or ema: from the online network",
        choices=("none", "copy", "ema"),
    )
    kmeans_n_init: int = _setting(D.KMEANS_N_INIT, "k-means++ restarts of the E-step and evaluations")
    estep_init: str = _setting(
        "cold",
        "cold: every E-step runs kmeans_n_init fresh restarts; warm: one run from the previous E-step's "
        "centres (the first E-step is cold; evaluations stay cold)",
        choices=("cold", "warm"),
    )
    final_kmeans_n_init: int = _setting(
        D.KMEANS_N_INIT, "k-means restarts of the final evaluation (a local minimum there would misreport the run)"
    )
    kmeans_max_iter: int = _setting(D.KMEANS_MAX_ITER, "Lloyd iterations of each k-means run at most")
    kmeans_tol: float = _setting(
        D.KMEANS_TOL, "a k-means run stops once an iteration lowers its inertia by less than this fraction"
    )
    eval_every: int = _setting(
        0,
        "evaluate (k-means of backbone and projector features) every this many epochs as well as at every "
        "E-step and at the end; 0: only at E-steps and the end",
    )
    compile: str = _setting(
        "none",
        "torch.compile the M-step (online encoder, predictor, PSA, PSL) with this backend; none: eager. "
        "On a CPU it does not pay (docs/trainer.rst)",
        choices=("none", "inductor", "aot_eager"),
        run_only=True,
    )
    output_dir: Optional[str] = _setting(None, "run directory, new or empty; none: ./runs/<timestamp>", run_only=True)

    @property
    def lr(self) -> float:
        """Learning rate of the backbone and projector after warm-up (scaled by batch/256)."""
        return self.base_lr * self.batch_size / D.LR_REFERENCE_BATCH

    @property
    def effective_psl_warmup_epochs(self) -> int:
        """Epochs before PSL and the PSA noise switch on (whole run for BYOL)."""
        if self.method == "byol":
            return self.epochs
        return self.warmup_epochs if self.psl_warmup_epochs is None else self.psl_warmup_epochs


#: Settings that may differ between a run and its resumption (not part of the config fingerprint).
RUN_ONLY_KEYS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["run_only"])

_FIELDS: Dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def config_to_dict(config: TrainConfig) -> Dict[str, Any]:
    """Plain ``dict`` of every field (JSON-serialisable).

    Example:
        >>> config_to_dict(TrainConfig())["temperature"]
        0.5
    """
    return dataclasses.asdict(config)


def _optional(name: str) -> bool:
    return str(_FIELDS[name].type).startswith("Optional")


def setting_help(name: str) -> str:
    """The help text of the :class:`TrainConfig` field ``name``, with its allowed values (``--help`` shows it).

    Raises:
        ConfigError: ``name`` is not a field.

    Example:
        >>> setting_help("optimizer")
        'SGD with momentum, or LARS (layer-wise trust ratio) around it (one of: sgd, lars)'
    """
    if name not in _FIELDS:
        raise ConfigError(f"unknown configuration key {name!r}; valid keys: {sorted(_FIELDS)}")
    metadata = _FIELDS[name].metadata
    choices = metadata["choices"]
    return metadata["help"] + (f" (one of: {', '.join(choices)})" if choices else "")


def _document_settings() -> None:
    """Add the list of fields, their defaults and help texts to :class:`TrainConfig`'s docstring."""
    items = "\n".join(
        f"    * ``{name}`` (default ``{spec.default!r}``): {setting_help(name)}." for name, spec in _FIELDS.items()
    )
    doc = TrainConfig.__doc__ or ""
    if "    Example:" not in doc:  # python -OO: no docstring (dataclass puts its signature there)
        return
    head, example = doc.split("    Example:", 1)
    TrainConfig.__doc__ = f"{head}    Settings:\n\n{items}\n\n    Example:{example}"


def _coerce(name: str, value: Any) -> Any:
    """Convert a value read from a file or flag to the field's type, or raise ConfigError."""
    annotation = str(_FIELDS[name].type)
    if value is None:
        if _optional(name):
            return None
        raise ConfigError(f"{name} must not be null")
    if "int" in annotation:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if "float" in annotation:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def config_from_dict(values: Mapping[str, Any], *, base: Optional[TrainConfig] = None) -> TrainConfig:
    """A :class:`TrainConfig` from ``base`` (default: the defaults) with ``values`` replaced.

    Raises:
        ConfigError: unknown key or a value of the wrong type.

    Example:
        >>> config_from_dict({"epochs": 2}).epochs
        2
    """
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {unknown}; valid keys: {sorted(_FIELDS)}")
    coerced = {name: _coerce(name, value) for name, value in values.items()}
    return dataclasses.replace(base if base is not None else TrainConfig(), **coerced)


def load_config_file(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a flat JSON (``.json``) or TOML (any other suffix) table of config fields.

    Raises:
        ConfigError: missing/unreadable file, syntax error or not a table.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
        else:
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {path!r} is not valid {'JSON' if path.endswith('.json') else 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a table of settings, got {type(data).__name__}")
    return data


def validate_config(config: TrainConfig) -> TrainConfig:
    """Check every field's range and choices; return ``config`` unchanged.

    Raises:
        ConfigError: naming the field and the bad value.

    Example:
        >>> validate_config(resolve_config("digits")).preset
        'digits'
    """

    def at_least(name: str, minimum: float, *, strict: bool = False) -> None:
        value = getattr(config, name)
        if value is None and _optional(name):
            return
        if value is None or not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise ConfigError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")

    if config.preset not in PRESETS:
        raise ConfigError(f"unknown preset {config.preset!r}; choose one of {list(PRESET_NAMES)}")
    for name, spec in _FIELDS.items():
        options = spec.metadata["choices"]
        value = getattr(config, name)
        if options is not None and not (value is None and _optional(name)) and value not in options:
            raise ConfigError(f"{name} must be one of {list(options)}, got {value!r}")
    if not 0.0 < config.psl_agreement <= 1.0:
        raise ConfigError(f"psl_agreement must be in (0, 1], got {config.psl_agreement!r}")
    for name in (
        "epochs",
        "batch_size",
        "hidden_dim",
        "out_dim",
        "estep_every",
        "kmeans_n_init",
        "kmeans_max_iter",
        "final_kmeans_n_init",
    ):
        at_least(name, 1)
    for name in ("seed", "warmup_epochs", "queue_size", "eval_every", "psl_warmup_epochs"):
        at_least(name, 0)
    at_least("rotation_degrees", 0.0)
    at_least("translate", 0.0)
    if config.crop_min_scale is not None and not 0.0 < config.crop_min_scale <= 1.0:
        raise ConfigError(f"crop_min_scale must be in (0, 1], got {config.crop_min_scale!r}")
    at_least("max_samples", 1)
    at_least("num_clusters", 2)
    for name in ("base_lr", "temperature", "kmeans_tol"):
        at_least(name, 0.0, strict=True)
    for name in ("weight_decay", "sgd_momentum", "predictor_lr_multiplier", "lambda_psl", "sigma"):
        at_least(name, 0.0)
    for name in ("base_momentum", "final_momentum", "sgd_momentum"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    if config.base_momentum > config.final_momentum:
        raise ConfigError(
            f"base_momentum ({config.base_momentum}) must not exceed final_momentum ({config.final_momentum})"
        )
    if config.dataset in ("mnist", "cifar10", "cifar20", "folder") and not config.data_dir:
        raise ConfigError(f"dataset {config.dataset!r} needs --data-dir")
    return config


def resolve_config(
    preset: Optional[str] = None,
    *,
    file_values: Optional[Mapping[str, Any]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> TrainConfig:
    """Defaults, then ``preset``, then ``file_values``, then ``overrides``; validated.

    The preset is taken from ``preset``, else from ``overrides``/``file_values`` (key ``"preset"``), else the preset
    named like the chosen ``dataset`` (e.g. ``mnist``) when there is one, else ``"digits"``.

    Args:
        preset: name in :data:`PRESET_NAMES`.
        file_values: settings read by :func:`load_config_file`.
        overrides: explicit settings (command-line flags).

    Raises:
        ConfigError: unknown preset or key, or an invalid value.

    Example:
        >>> resolve_config("mnist", overrides={"data_dir": "/data/mnist"}).backbone
        'flat_cnn'
    """
    file_values = dict(file_values or {})
    overrides = dict(overrides or {})
    given = [v for v in (preset, overrides.get("preset"), file_values.get("preset")) if v is not None]
    if given:
        name = given[0]
        if not isinstance(name, str) or name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {list(PRESET_NAMES)}")
    else:
        # No preset named: the one made for the chosen data set when there is one (--dataset mnist
        # gets the mnist preset, not the digits one), else digits.
        dataset = overrides.get("dataset", file_values.get("dataset"))
        name = dataset if isinstance(dataset, str) and dataset in PRESETS else "digits"
    config = config_from_dict({**PRESETS[name], "preset": name})
    config = config_from_dict({k: v for k, v in file_values.items() if k != "preset"}, base=config)
    config = config_from_dict({k: v for k, v in overrides.items() if k != "preset"}, base=config)
    return validate_config(config)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` (GPU ``LOCAL_RANK``) without CUDA is a ConfigError.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def augmentation_settings(config: TrainConfig, channels: int) -> Tuple[str, Dict[str, Any]]:
    """The augmentation kind (the data set's own when not set) and the keyword overrides of ``config``.

    Example:
        >>> augmentation_settings(resolve_config("digits", overrides={"translate": 0.1}), channels=1)
        ('digits', {'translate': 0.1})
    """
    kind = config.augmentation or {"digits": "digits", "mnist": "mnist"}.get(
        config.dataset, "color" if channels == 3 else "mnist"
    )
    crop = None if config.crop_min_scale is None else (config.crop_min_scale, 1.0)
    overrides = {"crop_scale": crop, "degrees": config.rotation_degrees, "translate": config.translate}
    return kind, {key: value for key, value in overrides.items() if value is not None}


def build_criterion(config: TrainConfig, predictor: nn.Module, num_clusters: int) -> ProPosLoss:
    """The library's :class:`~propos_losses.ProPosLoss` with the run's settings (it owns ``predictor``).

    ``method="byol"`` is the same criterion with ``lambda_psl = sigma = 0``.

    Example:
        >>> criterion = build_criterion(resolve_config("digits"), nn.Linear(64, 64), num_clusters=10)
        >>> criterion.lambda_psl, criterion.psl_start, criterion.psl_pairing
        (1.0, 20, 'cross')
    """
    propos = config.method == "propos"
    psl = PSL(num_clusters, temperature=config.temperature, queue_size=config.queue_size, feature_dim=config.out_dim)
    return ProPosLoss(
        PSA(predictor, sigma=config.sigma if propos else 0.0),
        psl,
        lambda_psl=config.lambda_psl if propos else 0.0,
        psl_start="auto" if config.psl_start == "auto" else config.effective_psl_warmup_epochs,
        agreement_threshold=config.psl_agreement,
        psl_pairing=config.psl_pairing,
    )


def build_estep(config: TrainConfig, num_clusters: int, *, seed: int) -> EStep:
    """The library's :class:`~propos_losses.EStep` with the run's k-means settings (call ``n`` uses ``seed + n``)."""
    return EStep(
        num_clusters,
        n_init=config.kmeans_n_init,
        max_iter=config.kmeans_max_iter,
        tol=config.kmeans_tol,
        seed=seed,
        warm_start=config.estep_init == "warm",
        batch_size=1024,
    )


_document_settings()


def check_batch_split(config: TrainConfig, num_samples: int, world_size: int) -> int:
    """The per-process batch of ``config.batch_size`` over ``world_size`` processes, or a ConfigError.

    Example:
        >>> check_batch_split(resolve_config("digits"), num_samples=1797, world_size=2)
        16
    """
    if config.batch_size > num_samples:
        raise ConfigError(f"batch_size ({config.batch_size}) is larger than the data set ({num_samples} samples)")
    if config.batch_size % world_size:
        raise ConfigError(
            f"batch_size ({config.batch_size}) must be divisible by the number of processes ({world_size})"
        )
    local_batch = config.batch_size // world_size
    if local_batch < 2:
        raise ConfigError(f"each process needs at least 2 samples per batch for BatchNorm, got {local_batch}")
    return local_batch
