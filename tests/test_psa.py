"""Tests of positive sampling alignment (ProPos Eq. 9, 10)."""

from __future__ import annotations

import math
from typing import List, Sequence

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from propos_losses import defaults
from propos_losses.psa import PSA, PositiveSamplingAlignment, positive_sampling_alignment

B, D = 5, 4
SEED = 1234


def linear_predictor(
    dim_in: int = D, dim_out: int = D, *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(dim_in, dim_out).to(dtype)


def inputs(dtype: torch.dtype = torch.float32, seed: int = 1, batch_size: int = B) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch_size, D, generator=generator, dtype=torch.float64).to(dtype)
    z = torch.randn(batch_size, D, generator=generator, dtype=torch.float64).to(dtype)
    return q.requires_grad_(), z


def oracle_psa(
    q: Sequence[Sequence[float]],
    z: Sequence[Sequence[float]],
    weight: Sequence[Sequence[float]],
    bias: Sequence[float],
    eps: Sequence[Sequence[float]],
    sigma: float,
) -> float:
    """Eq. 9/10 with explicit loops in Python floats (float64), predictor g(v) = W v + b."""
    total = 0.0
    for q_i, z_i, eps_i in zip(q, z, eps):
        v = [q_ij + sigma * eps_ij for q_ij, eps_ij in zip(q_i, eps_i)]  # Eq. 9
        p = [sum(w_kj * v_j for w_kj, v_j in zip(w_k, v)) + b_k for w_k, b_k in zip(weight, bias)]
        p_norm = math.sqrt(sum(p_k * p_k for p_k in p))
        z_norm = math.sqrt(sum(z_k * z_k for z_k in z_i))
        total += sum((p_k / p_norm - z_k / z_norm) ** 2 for p_k, z_k in zip(p, z_i))  # Eq. 10
    return total / len(q)


def as_lists(tensor: Tensor) -> List:
    return tensor.detach().double().tolist()


# --- value -----------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("sigma", [0.0, 1e-3, 0.5])
def test_loss_matches_a_float64_loop_oracle_of_eq_10_given_the_same_noise(
    dtype: torch.dtype, tolerance: float, sigma: float
) -> None:
    predictor = linear_predictor(dtype=dtype)
    q, z = inputs(dtype)
    psa = PSA(predictor, sigma=sigma, generator=torch.Generator().manual_seed(SEED))
    loss = psa(q, z)
    # The same draw the loss makes: one standard normal (B, d) tensor in the compute dtype.
    eps = torch.randn(B, D, generator=torch.Generator().manual_seed(SEED), dtype=dtype)
    expected = oracle_psa(
        as_lists(q), as_lists(z), as_lists(predictor.weight), as_lists(predictor.bias), as_lists(eps), sigma
    )
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(expected, abs=tolerance, rel=tolerance)


def test_sigma_zero_is_exactly_byols_loss() -> None:
    predictor = linear_predictor()
    q, z = inputs()
    byol = (2 - 2 * F.cosine_similarity(predictor(q), z, dim=1)).mean()
    psa = PSA(predictor, sigma=0.0, generator=torch.Generator().manual_seed(SEED))
    assert psa.training
    torch.testing.assert_close(psa(q, z), byol, rtol=0, atol=1e-6)


def test_noise_changes_the_loss_in_training_mode_and_is_off_in_eval_mode() -> None:
    predictor = linear_predictor()
    q, z = inputs()
    clean = PSA(predictor, sigma=0.0)(q, z)
    psa = PSA(predictor, sigma=0.5)
    noisy = psa(q, z)
    assert not torch.allclose(noisy, clean)
    psa.eval()
    assert torch.equal(psa(q, z), clean)
    assert torch.equal(positive_sampling_alignment(q, z, predictor, sigma=0.5, training=False), clean)


def test_same_generator_seed_gives_the_same_loss_and_another_seed_does_not() -> None:
    predictor = linear_predictor()
    q, z = inputs()

    def loss_with_seed(seed: int) -> Tensor:
        return PSA(predictor, sigma=0.1, generator=torch.Generator().manual_seed(seed))(q, z)

    assert torch.equal(loss_with_seed(7), loss_with_seed(7))
    assert not torch.equal(loss_with_seed(7), loss_with_seed(8))


def test_global_rng_is_used_without_a_generator() -> None:
    predictor = linear_predictor()
    q, z = inputs()
    psa = PSA(predictor, sigma=0.1)
    torch.manual_seed(3)
    first = psa(q, z)
    torch.manual_seed(3)
    assert torch.equal(psa(q, z), first)


def test_sigma_is_changeable_at_run_time_and_validated() -> None:
    predictor = linear_predictor()
    q, z = inputs()
    psa = PSA(predictor)
    assert psa.sigma == defaults.SIGMA
    psa.sigma = 0.0
    torch.testing.assert_close(psa(q, z), PSA(predictor, sigma=0.0)(q, z), rtol=0, atol=0)
    for bad, error in [(-1e-3, ValueError), (float("nan"), ValueError), ("0.1", TypeError)]:
        with pytest.raises(error):
            psa.sigma = bad  # type: ignore[assignment]
        assert psa.sigma == 0.0


def test_symmetric_sums_both_view_orders() -> None:
    predictor = linear_predictor()
    q1, z1 = inputs(seed=1)
    q2, z2 = inputs(seed=2)
    psa = PSA(predictor, sigma=0.0)
    torch.testing.assert_close(psa.symmetric(q1, q2, z1, z2), psa(q1, z2) + psa(q2, z1), rtol=0, atol=0)


def test_identical_prediction_and_target_give_zero_loss_and_opposite_give_four() -> None:
    identity = nn.Identity()
    q, _ = inputs()
    assert PSA(identity, sigma=0.0)(q, 3.0 * q.detach()).item() == pytest.approx(0.0, abs=1e-6)
    assert PSA(identity, sigma=0.0)(q, -q.detach()).item() == pytest.approx(4.0, abs=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    scale=st.floats(min_value=1e-3, max_value=1e3),
    seed=st.integers(min_value=0, max_value=2**16),
    permutation_seed=st.integers(min_value=0, max_value=2**16),
)
def test_loss_is_in_range_and_invariant_to_target_scale_and_batch_order(
    scale: float, seed: int, permutation_seed: int
) -> None:
    predictor = linear_predictor(dtype=torch.float64)
    q, z = inputs(torch.float64, seed=seed)
    loss = positive_sampling_alignment(q, z, predictor, sigma=0.0)
    assert 0.0 <= loss.item() <= 4.0
    torch.testing.assert_close(positive_sampling_alignment(q, scale * z, predictor, sigma=0.0), loss)
    order = torch.randperm(B, generator=torch.Generator().manual_seed(permutation_seed))
    torch.testing.assert_close(positive_sampling_alignment(q[order], z[order], predictor, sigma=0.0), loss)


@settings(max_examples=40, deadline=None)
@given(
    log10_prediction_scale=st.floats(min_value=-30.0, max_value=30.0),
    log10_target_scale=st.floats(min_value=-30.0, max_value=30.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_loss_is_invariant_to_the_scale_of_prediction_and_target_from_1e_minus_30_to_1e30(
    log10_prediction_scale: float, log10_target_scale: float, seed: int
) -> None:
    # Exact normalisation: a prediction of norm 1e-30 has a direction like any other (an eps clamp
    # would shrink it towards a cosine of 0).
    predictor = linear_predictor(dtype=torch.float64)
    q, z = inputs(torch.float64, seed=seed)
    prediction_scale, target_scale = 10.0**log10_prediction_scale, 10.0**log10_target_scale
    loss = positive_sampling_alignment(q, z, predictor, sigma=0.0)
    scaled = positive_sampling_alignment(q, target_scale * z, lambda v: prediction_scale * predictor(v), sigma=0.0)
    torch.testing.assert_close(scaled, loss, rtol=1e-12, atol=1e-12)
    scaled.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_predictions_keep_their_direction_in_low_precision(dtype: torch.dtype) -> None:
    q, z = inputs(dtype)
    identity = nn.Identity()
    reference = positive_sampling_alignment(q.detach().float(), z.float(), identity, sigma=0.0)
    scale = 2.0**-100  # exact in both dtypes; the squared norm (~2^-200) underflows both
    loss = positive_sampling_alignment(q.detach() * scale, z * scale, identity, sigma=0.0)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_gradcheck_wrt_online_projection_and_predictor_parameters(sigma: float) -> None:
    q, z = inputs(torch.float64)
    torch.manual_seed(0)
    weight = torch.randn(D, D, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(D, dtype=torch.float64, requires_grad=True)

    def loss(q: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        # A fresh generator per call: gradcheck needs the same noise at every evaluation.
        generator = torch.Generator().manual_seed(SEED)
        return positive_sampling_alignment(q, z, lambda v: F.linear(v, weight, bias), sigma=sigma, generator=generator)

    assert torch.autograd.gradcheck(loss, (q, weight, bias))
    assert torch.autograd.gradgradcheck(loss, (q, weight, bias))


def test_predictor_module_parameters_receive_the_same_gradient_as_the_functional_form() -> None:
    predictor = linear_predictor(dtype=torch.float64)
    q, z = inputs(torch.float64)
    PSA(predictor, sigma=0.2, generator=torch.Generator().manual_seed(SEED))(q, z).backward()
    weight = predictor.weight.detach().clone().requires_grad_()
    bias = predictor.bias.detach().clone().requires_grad_()
    positive_sampling_alignment(
        q.detach(), z, lambda v: F.linear(v, weight, bias), sigma=0.2, generator=torch.Generator().manual_seed(SEED)
    ).backward()
    torch.testing.assert_close(predictor.weight.grad, weight.grad)
    torch.testing.assert_close(predictor.bias.grad, bias.grad)


def test_target_projection_receives_no_gradient() -> None:
    predictor = linear_predictor()
    q, z = inputs()
    z.requires_grad_()
    PSA(predictor)(q, z).backward()
    assert z.grad is None
    assert q.grad is not None and torch.isfinite(q.grad).all()


# --- precision and degenerate input ----------------------------------------------------------


def test_bf16_autocast_gives_a_finite_float32_loss_close_to_float32() -> None:
    predictor = linear_predictor()
    q, z = inputs()
    reference = PSA(predictor, sigma=0.0)(q, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = PSA(predictor, sigma=0.0)(q, z)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, reference, rtol=0, atol=3e-2)
    loss.backward()
    assert q.grad is not None and predictor.weight.grad is not None
    assert torch.isfinite(q.grad).all() and torch.isfinite(predictor.weight.grad).all()


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("predictor_in_half", [False, True])
def test_half_inputs_give_a_finite_float32_loss_close_to_float32(half: torch.dtype, predictor_in_half: bool) -> None:
    predictor = linear_predictor()
    q, z = inputs()
    reference = PSA(predictor, sigma=0.0)(q, z)
    low_predictor = linear_predictor(dtype=half) if predictor_in_half else predictor
    q_half = q.detach().to(half).requires_grad_()
    loss = PSA(low_predictor, sigma=0.0)(q_half, z.to(half))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, reference, rtol=0, atol=3e-2)
    loss.backward()
    assert q_half.grad is not None and torch.isfinite(q_half.grad).all()


def test_small_noise_survives_half_precision_inputs() -> None:
    # sigma = 1e-3 is below float16's spacing near 1; the noise must still reach the predictor.
    q = torch.ones(B, D, dtype=torch.float16)
    z = torch.randn(B, D)
    seen: List[Tensor] = []

    def recording_identity(v: Tensor) -> Tensor:
        seen.append(v)
        return v

    positive_sampling_alignment(q, z, recording_identity, sigma=1e-3, generator=torch.Generator().manual_seed(SEED))
    assert seen[0].dtype == torch.float32
    assert not torch.equal(seen[0], q.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("which", ["prediction", "target", "both"])
def test_zero_vectors_give_a_finite_loss_and_gradient(dtype: torch.dtype, which: str) -> None:
    predictor = linear_predictor(dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    q, z = inputs(dtype)
    z = z.clone()
    if which in ("prediction", "both"):
        with torch.no_grad():
            predictor.weight.zero_()
            predictor.bias.zero_()
    if which in ("target", "both"):
        z[0] = 0
    loss = PSA(predictor, sigma=0.0)(q, z)
    loss.backward()
    assert torch.isfinite(loss)
    assert q.grad is not None and predictor.weight.grad is not None
    assert torch.isfinite(q.grad).all() and torch.isfinite(predictor.weight.grad).all()
    if which == "both":
        assert loss.item() == pytest.approx(2.0)


# --- module structure and bad input -------------------------------------------------------------


def test_psa_owns_the_predictor_so_it_can_have_its_own_learning_rate() -> None:
    predictor = linear_predictor()
    psa = PositiveSamplingAlignment(predictor)
    assert psa.predictor is predictor
    assert list(psa.parameters()) == list(predictor.parameters())
    assert set(psa.state_dict()) == {"predictor.weight", "predictor.bias"}
    torch.optim.SGD([{"params": psa.predictor.parameters(), "lr": 0.5}], lr=0.05)


def test_sigma_defaults_to_the_papers_value() -> None:
    assert PSA(linear_predictor()).sigma == defaults.SIGMA


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"predictor": lambda v: v}, TypeError),
        ({"predictor": None}, TypeError),
        ({"sigma": -1e-3}, ValueError),
        ({"sigma": float("inf")}, ValueError),
        ({"sigma": float("nan")}, ValueError),
        ({"sigma": "1e-3"}, TypeError),
        ({"sigma": True}, TypeError),
        ({"generator": 0}, TypeError),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict, error: type) -> None:
    arguments = {"predictor": linear_predictor(), **kwargs}
    with pytest.raises(error):
        PositiveSamplingAlignment(**arguments)


GOOD_Q = torch.randn(B, D)
GOOD_Z = torch.randn(B, D)


@pytest.mark.parametrize(
    ("q", "z", "error"),
    [
        pytest.param(GOOD_Q.tolist(), GOOD_Z, TypeError, id="online-not-a-tensor"),
        pytest.param(GOOD_Q, GOOD_Z.numpy(), TypeError, id="target-not-a-tensor"),
        pytest.param(GOOD_Q[0], GOOD_Z, ValueError, id="online-1d"),
        pytest.param(GOOD_Q, GOOD_Z[None], ValueError, id="target-3d"),
        pytest.param(GOOD_Q.long(), GOOD_Z, TypeError, id="online-int"),
        pytest.param(GOOD_Q, GOOD_Z.int(), TypeError, id="target-int"),
        pytest.param(GOOD_Q, GOOD_Z[:-1], ValueError, id="batch-mismatch"),
        pytest.param(GOOD_Q[:0], GOOD_Z[:0], ValueError, id="empty-batch"),
        pytest.param(GOOD_Q, torch.randn(B, D + 1), ValueError, id="target-dim-differs-from-prediction"),
        pytest.param(torch.full((B, D), float("nan")), GOOD_Z, ValueError, id="online-nan"),
        pytest.param(GOOD_Q, torch.full((B, D), float("inf")), ValueError, id="target-inf"),
    ],
)
def test_bad_forward_input_raises(q: object, z: object, error: type) -> None:
    with pytest.raises(error):
        PSA(linear_predictor())(q, z)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"predictor": "linear"}, TypeError),
        ({"predictor": lambda v: v.sum()}, ValueError),  # output is not (B, d)
        ({"sigma": -0.5}, ValueError),
        ({"generator": "seed"}, TypeError),
        ({"training": 1}, TypeError),
    ],
)
def test_bad_functional_arguments_raise(kwargs: dict, error: type) -> None:
    arguments: dict = {"predictor": linear_predictor(), **kwargs}
    with pytest.raises(error):
        positive_sampling_alignment(GOOD_Q, GOOD_Z, **arguments)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a generator on another device")
def test_generator_on_another_device_raises() -> None:
    with pytest.raises(ValueError, match="generator"):
        positive_sampling_alignment(GOOD_Q, GOOD_Z, linear_predictor(), generator=torch.Generator(device="cuda"))


def test_huge_sigma_is_rejected_instead_of_giving_nan() -> None:
    q, z = inputs()
    predictor = linear_predictor()
    # sigma = 1e38 used to overflow the float32 noise and return NaN silently.
    for bad in (1e38, 2 * defaults.SIGMA_MAX):
        with pytest.raises(ValueError, match=r"sigma must be <= 10000"):
            PSA(predictor, sigma=bad)
        with pytest.raises(ValueError, match=r"sigma must be <="):
            positive_sampling_alignment(q, z, predictor, sigma=bad)
    loss = PSA(predictor, sigma=defaults.SIGMA_MAX)(q, z)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "predictor, first",
    [
        (nn.Linear(5, 4), "Linear predictor (in_features)"),
        (nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4)), "Linear 0 (in_features)"),
        (nn.Sequential(nn.Sequential(nn.BatchNorm1d(5)), nn.Linear(5, 4)), "BatchNorm1d 0.0 (num_features)"),
    ],
)
def test_projection_width_that_the_predictor_cannot_take_is_a_clear_error(predictor: nn.Module, first: str) -> None:
    q, z = torch.randn(6, 3), torch.randn(6, 4)
    running = [b.clone() for b in predictor.buffers()]
    with pytest.raises(ValueError, match=r"width 3 but the predictor's first layer") as info:
        PSA(predictor)(q, z)
    assert first in str(info.value) and "takes 5 features" in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(running, predictor.buffers()))


def test_predictors_without_a_stated_width_still_run() -> None:
    q, z = torch.randn(6, 3), torch.randn(6, 4)
    lazy = nn.Sequential(nn.LazyLinear(4))
    assert torch.isfinite(PSA(lazy)(q, z))
    assert torch.isfinite(positive_sampling_alignment(q, z, lambda v: v @ torch.ones(3, 4)))
