"""The public API (docs/api.rst): names, aliases, keyword names, docstrings and type hints."""

from __future__ import annotations

import inspect

import pytest
from typing_extensions import is_typeddict

import propos_losses

REQUIRED = [
    "PrototypeScatteringLoss",
    "PSL",
    "PositiveSamplingAlignment",
    "PSA",
    "MomentumUpdater",
    "PrototypeQueue",
    "SphericalKMeans",
    "spherical_kmeans",
    "nmi",
    "ami",
    "ari",
    "cluster_accuracy",
    "evaluate_clustering",
    "cluster_size_stats",
    "alignment",
    "uniformity",
]


def test_from_propos_losses_import_psl_works() -> None:
    from propos_losses import PSL  # noqa: F401  (the one-line promise of the README)


@pytest.mark.parametrize("name", REQUIRED)
def test_required_name_is_exported(name: str) -> None:
    assert name in propos_losses.__all__
    assert getattr(propos_losses, name) is not None


def test_aliases_are_the_same_objects() -> None:
    assert propos_losses.PSL is propos_losses.PrototypeScatteringLoss
    assert propos_losses.PSA is propos_losses.PositiveSamplingAlignment


@pytest.mark.parametrize(
    ("obj", "keywords"),
    [
        ("PSL", ["num_clusters", "temperature", "queue_size"]),
        ("PSA", ["predictor", "sigma"]),
        ("MomentumUpdater", ["base_momentum", "final_momentum", "total_steps"]),
        ("SphericalKMeans", ["n_clusters", "n_init", "max_iter", "tol", "seed"]),
    ],
)
def test_constructor_keyword_names_are_the_contract(obj: str, keywords: list[str]) -> None:
    parameters = inspect.signature(getattr(propos_losses, obj)).parameters
    assert [k for k in keywords if k not in parameters] == []


def test_forward_signatures_are_the_contract() -> None:
    psl_parameters = inspect.signature(propos_losses.PSL.forward).parameters
    positional = [n for n, p in psl_parameters.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional[1:] == ["online", "target", "assignments", "indices"]
    # Later additions are keyword-only, so the positional contract cannot shift.
    assert [n for n, p in psl_parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY] == ["enqueue"]
    assert list(inspect.signature(propos_losses.PSA.forward).parameters)[1:] == [
        "online_projection",
        "target_projection",
    ]
    for metric in ("nmi", "ami", "ari", "cluster_accuracy", "evaluate_clustering"):
        assert list(inspect.signature(getattr(propos_losses, metric)).parameters)[:2] == [
            "labels_true",
            "labels_pred",
        ]


@pytest.mark.parametrize("name", [n for n in propos_losses.__all__ if n != "__version__"])
def test_public_name_has_docstring_with_example_and_type_hints(name: str) -> None:
    obj = getattr(propos_losses, name)
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    if inspect.isclass(obj) and issubclass(obj, tuple):
        return  # NamedTuple records document their fields, nothing to run
    assert ">>>" in doc, f"{name} docstring has no example"
    if is_typeddict(obj):
        assert obj.__annotations__, f"{name} declares no keys"
        return  # a TypedDict's keys are its annotations; its constructor is dict's
    if inspect.isclass(obj) and issubclass(obj, BaseException) and "__init__" not in vars(obj):
        return  # an exception or warning class that keeps BaseException's (*args) constructor
    function = obj.__init__ if inspect.isclass(obj) else obj
    hints = {k: p.annotation for k, p in inspect.signature(function).parameters.items() if k != "self"}
    missing = [k for k, a in hints.items() if a is inspect.Parameter.empty]
    assert missing == [], f"{name}: parameters without type hints: {missing}"
