"""Landmark losses: values from their definitions, continuity, and the Laplacian of SDFL eq. 6-8."""
import functools
import math

import pytest
import torch

from facemark.models.losses import (
    POINT_LOSSES,
    adaptive_wing_loss,
    l1_loss,
    l2_loss,
    relative_location_loss,
    soft_wing_loss,
    uniform_laplacian,
    wing_loss,
)

torch.set_num_threads(1)


def _slope(function, x: float) -> float:
    point = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    function(point).sum().backward()
    return float(point.grad[0])


def test_soft_wing_matches_eq9_at_sample_points():
    omega1, omega2, epsilon = 2.0, 20.0, 0.5
    b = omega1 - omega2 * math.log(1 + omega1 / epsilon)
    samples = [0.0, 0.3, -1.5, 1.999, 2.0, -2.5, 7.0, 20.0, -100.0]
    expected = [abs(x) if abs(x) < omega1 else omega2 * math.log(1 + abs(x) / epsilon) + b for x in samples]
    got = soft_wing_loss(torch.tensor(samples, dtype=torch.float64), omega1, omega2, epsilon)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    # B = 2 - 20 ln 5 with the paper's values, the constant of the authors' release too.
    assert b == pytest.approx(2 - 20 * math.log(5))


def test_soft_wing_continuous_at_omega1_but_slope_jumps():
    loss = functools.partial(soft_wing_loss, omega1=2.0, omega2=20.0, epsilon=0.5)
    below = loss(torch.tensor([2.0 - 1e-9], dtype=torch.float64))
    above = loss(torch.tensor([2.0 + 1e-9], dtype=torch.float64))
    assert float((above - below).abs()) < 1e-7
    assert float(loss(torch.tensor([2.0], dtype=torch.float64))) == pytest.approx(2.0)
    # Eq. 9 is continuous in value only: slope 1 below omega1, omega2 / (omega1 + epsilon) = 8 above.
    assert _slope(loss, 1.9) == pytest.approx(1.0)
    assert _slope(loss, 2.0 + 1e-9) == pytest.approx(8.0, rel=1e-6)
    # Symmetric in the sign of the error.
    assert torch.equal(loss(torch.tensor([-3.7])), loss(torch.tensor([3.7])))


def test_wing_values_and_smooth_join():
    omega, epsilon = 10.0, 2.0
    c = omega - omega * math.log(1 + omega / epsilon)
    samples = torch.tensor([0.0, 1.0, -5.0, 9.99, 10.0, 30.0], dtype=torch.float64)
    expected = [omega * math.log(1 + abs(x) / epsilon) if abs(x) < omega else abs(x) - c for x in samples.tolist()]
    assert torch.allclose(wing_loss(samples, omega, epsilon), torch.tensor(expected, dtype=torch.float64))
    loss = functools.partial(wing_loss, omega=omega, epsilon=epsilon)
    assert float(loss(torch.tensor([omega - 1e-9], dtype=torch.float64))) == pytest.approx(
        float(loss(torch.tensor([omega + 1e-9], dtype=torch.float64))), abs=1e-7)
    # Continuous in value only (as defined by Feng et al.): the log part ends with slope
    # omega / (omega + epsilon), the linear part has slope 1.
    assert _slope(loss, omega - 1e-9) == pytest.approx(omega / (omega + epsilon), rel=1e-6)
    assert _slope(loss, omega + 1.0) == pytest.approx(1.0)


def test_adaptive_wing_values_and_continuity():
    omega, theta, epsilon, alpha = 14.0, 0.5, 1.0, 2.1

    def reference(x: float, y: float) -> float:
        power = alpha - y
        a = omega * (1 / (1 + (theta / epsilon) ** power)) * power * (theta / epsilon) ** (power - 1) / epsilon
        c = theta * a - omega * math.log(1 + (theta / epsilon) ** power)
        return omega * math.log(1 + abs(x / epsilon) ** power) if abs(x) < theta else a * abs(x) - c

    for y in (0.0, 0.7):
        samples = [0.0, 0.1, -0.3, 0.49, 0.5, 2.0, -6.0]
        target = None if y == 0.0 else torch.full((len(samples),), y, dtype=torch.float64)
        got = adaptive_wing_loss(torch.tensor(samples, dtype=torch.float64), target, omega, theta, epsilon, alpha)
        assert torch.allclose(got, torch.tensor([reference(x, y) for x in samples], dtype=torch.float64), atol=1e-10)
    loss = functools.partial(adaptive_wing_loss, omega=omega, theta=theta, epsilon=epsilon, alpha=alpha)
    assert float(loss(torch.tensor([theta - 1e-9], dtype=torch.float64))) == pytest.approx(
        float(loss(torch.tensor([theta + 1e-9], dtype=torch.float64))), abs=1e-6)
    assert _slope(loss, theta - 1e-7) == pytest.approx(_slope(loss, theta + 1e-7), rel=1e-4)


def test_l1_l2_and_registry():
    x = torch.tensor([-3.0, 0.5, 2.0])
    assert torch.equal(l1_loss(x), torch.tensor([3.0, 0.5, 2.0]))
    assert torch.equal(l2_loss(x), torch.tensor([9.0, 0.25, 4.0]))
    assert set(POINT_LOSSES) == {"l1", "l2", "wing", "soft_wing", "adaptive_wing"}
    with pytest.raises(ValueError, match="epsilon"):
        soft_wing_loss(x, epsilon=0.0)


def _chain_neighbourhood(num_points: int) -> torch.Tensor:
    neighbourhood = torch.eye(num_points, dtype=torch.bool)
    for i in range(num_points):
        neighbourhood[i, (i - 1) % num_points] = True
        neighbourhood[i, (i + 1) % num_points] = True
    neighbourhood[0, 3] = True  # one row with 3 neighbours: weights 1/3
    return neighbourhood


def test_uniform_laplacian_matrix_eq7():
    laplacian = uniform_laplacian(_chain_neighbourhood(6))
    assert torch.allclose(laplacian.diagonal(), torch.ones(6))
    assert torch.allclose(laplacian.sum(dim=1), torch.zeros(6), atol=1e-7)
    assert laplacian[0, 1] == pytest.approx(-1 / 3) and laplacian[0, 3] == pytest.approx(-1 / 3)
    assert laplacian[1, 0] == pytest.approx(-0.5) and laplacian[1, 3] == 0
    with pytest.raises(ValueError, match="no neighbour"):
        uniform_laplacian(torch.eye(4, dtype=torch.bool))


def test_laplacian_of_translated_scaled_rotated_shape():
    generator = torch.Generator().manual_seed(0)
    shape = torch.rand(6, 2, generator=generator, dtype=torch.float64) * 100
    laplacian = uniform_laplacian(_chain_neighbourhood(6)).double()
    delta = laplacian @ shape  # eq. 8
    # Eq. 6: delta_i = p_i - sum_j w_ij p_j with sum_j w_ij = 1 -> blind to translation ...
    assert torch.allclose(laplacian @ (shape + torch.tensor([13.0, -7.0], dtype=torch.float64)), delta)
    # ... and linear: a scaled (rotated) shape has scaled (rotated) Laplacian coordinates.
    assert torch.allclose(laplacian @ (2.5 * shape), 2.5 * delta)
    angle = torch.tensor(0.4, dtype=torch.float64)
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    assert torch.allclose(laplacian @ (shape @ rotation.T), delta @ rotation.T)


def test_relative_location_loss_ignores_translation_of_prediction():
    neighbourhood = _chain_neighbourhood(6)
    laplacian = uniform_laplacian(neighbourhood)
    target = torch.rand(2, 6, 2) * 50
    shifted = target + torch.tensor([5.0, -3.0])
    assert float(relative_location_loss(shifted, target, laplacian).sum()) == pytest.approx(0.0, abs=1e-4)
    distorted = target.clone()
    distorted[:, 2] += 4.0
    assert float(relative_location_loss(distorted, target, laplacian).sum()) > 1.0
    with pytest.raises(ValueError, match="laplacian"):
        relative_location_loss(target, target, torch.eye(5))
