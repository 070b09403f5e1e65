"""ProPosStep (one online forward over both views, then ProPosLoss) and extract_features of tuple outputs."""

from __future__ import annotations

from typing import Tuple

import pytest
import torch
from torch import Tensor, nn

from propos_losses import PSA, PSL, ProPosLoss, ProPosStep, extract_features

B, D, K, N = 8, 6, 3, 40


class TwoOutputs(nn.Module):
    """An encoder returning ``(features, projections)`` like the reference trainer's."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU())
        self.projector = nn.Linear(12, D)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        features = self.backbone(x)
        return features, self.projector(features)


def make_step(online: nn.Module) -> ProPosStep:
    torch.manual_seed(0)
    criterion = ProPosLoss(PSA(nn.Linear(D, D), sigma=0.0), PSL(num_clusters=K), psl_start=0)
    criterion.set_pseudo_labels(torch.arange(N) % K)
    return ProPosStep(online, criterion)


def test_propos_step_equals_the_criterion_on_one_forward_of_both_views() -> None:
    step = make_step(TwoOutputs())
    x1, x2 = torch.randn(2, B, 5, generator=torch.Generator().manual_seed(1)).unbind(0)
    z1, z2 = torch.randn(2, B, D, generator=torch.Generator().manual_seed(2)).unbind(0)
    indices = torch.arange(B)
    loss = step(x1, x2, z1, z2, indices)
    # By hand: BatchNorm statistics over both views at once (2B rows), then the criterion.
    _, projections = step.online(torch.cat((x1, x2)))
    q1, q2 = projections.chunk(2)
    expected = step.criterion(q1, q2, z1, z2, indices)
    torch.testing.assert_close(loss, expected)
    # One forward per view instead gives other BatchNorm statistics, so another loss.
    separate = step.criterion(step.online(x1)[1], step.online(x2)[1], z1, z2, indices)
    assert not torch.allclose(loss, separate)
    loss.backward()
    assert step.online.projector.weight.grad is not None and step.criterion.psa.predictor.weight.grad is not None


def test_propos_step_takes_an_online_module_returning_the_projection_alone() -> None:
    step = make_step(nn.Linear(5, D))
    x1, x2 = torch.randn(2, B, 5).unbind(0)
    z1, z2 = torch.randn(2, B, D).unbind(0)
    assert step(x1, x2, z1, z2, torch.arange(B)).shape == ()


def test_propos_step_refuses_views_of_different_shapes_and_wrong_arguments() -> None:
    step = make_step(nn.Linear(5, D))
    with pytest.raises(ValueError, match="view_2 must have the shape of view_1"):
        step(torch.randn(B, 5), torch.randn(B + 1, 5), torch.randn(B, D), torch.randn(B, D), torch.arange(B))
    with pytest.raises(TypeError, match="criterion must be a ProPosLoss"):
        ProPosStep(nn.Linear(5, D), PSL(num_clusters=K))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="online must be an nn.Module"):
        ProPosStep(lambda x: x, step.criterion)  # type: ignore[arg-type]


def test_for_training_is_the_step_itself_in_one_eager_process_and_compiles_when_asked() -> None:
    step = make_step(nn.Linear(5, D))
    assert step.for_training() is step
    compiled = step.for_training(compile_backend="aot_eager")
    assert compiled is not step
    x1, x2 = torch.randn(2, B, 5, generator=torch.Generator().manual_seed(3)).unbind(0)
    z1, z2 = torch.randn(2, B, D, generator=torch.Generator().manual_seed(4)).unbind(0)
    step.criterion.validate_args = False
    torch.testing.assert_close(compiled(x1, x2, z1, z2, torch.arange(B)), step(x1, x2, z1, z2, torch.arange(B)))


def test_validate_args_of_the_criterion_sets_both_losses_and_checks_its_type() -> None:
    criterion = make_step(nn.Linear(5, D)).criterion
    criterion.validate_args = False
    assert not criterion.psa.validate_args and not criterion.psl.validate_args and not criterion.validate_args
    with pytest.raises(TypeError, match="validate_args must be a bool"):
        criterion.validate_args = 1  # type: ignore[assignment]


def test_extract_features_of_a_tuple_output_returns_each_part_in_data_set_order() -> None:
    net = TwoOutputs()
    data = torch.randn(N, 5)
    features, projections = extract_features(net, data, batch_size=7)
    net.eval()
    with torch.no_grad():
        expected_features, expected_projections = net(data)
    torch.testing.assert_close(features, expected_features)
    torch.testing.assert_close(projections, expected_projections)
    with pytest.raises(TypeError, match="tuple of tensors"):
        extract_features(nn.Sequential(TwoOutputs(), _Strings()), data)


class _Strings(nn.Module):
    def forward(self, parts: Tuple[Tensor, Tensor]) -> Tuple[str, Tensor]:
        return "features", parts[1]
