"""Landmark coordinate losses, usable by any coordinate-regression method.

Every point loss here is an element-wise function of a difference tensor ``x = prediction - target``
(any shape, one value per x or y coordinate) and returns a tensor of the same shape; the caller
chooses the reduction. Units matter for the piece-wise losses: their thresholds are in whatever
unit ``x`` is in (SDFL uses pixels of the 256 x 256 crop).

- :func:`l1_loss`, :func:`l2_loss`
- :func:`wing_loss` (Feng et al., CVPR 2018; SDFL paper eq. 11)
- :func:`soft_wing_loss` (SDFL paper eq. 9)
- :func:`adaptive_wing_loss` (Wang et al., ICCV 2019), used on coordinates
- :func:`uniform_laplacian` and :func:`relative_location_loss` (SDFL paper eq. 6-8 and 10)

``POINT_LOSSES`` maps config names to these functions, e.g.
``functools.partial(POINT_LOSSES["wing"], omega=20.0, epsilon=0.5)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = [
    "l1_loss",
    "l2_loss",
    "wing_loss",
    "soft_wing_loss",
    "adaptive_wing_loss",
    "uniform_laplacian",
    "relative_location_loss",
    "POINT_LOSSES",
]


def l1_loss(x: torch.Tensor) -> torch.Tensor:
    """|x| element-wise."""
    return x.abs()


def l2_loss(x: torch.Tensor) -> torch.Tensor:
    """x^2 element-wise (squared error per coordinate)."""
    return x * x


def wing_loss(x: torch.Tensor, omega: float = 10.0, epsilon: float = 2.0) -> torch.Tensor:
    """Wing loss (Feng et al. 2018; SDFL eq. 11), element-wise.

    ``omega * ln(1 + |x| / epsilon)`` for ``|x| < omega``, else ``|x| - C`` with
    ``C = omega - omega * ln(1 + omega / epsilon)`` so both pieces meet at ``omega`` (in value; the
    slope goes from ``omega / (omega + epsilon)`` to 1).
    Defaults are the Wing paper's (omega = 10, epsilon = 2); SDFL's Fig. 6 / Table VII use omega = 20
    with epsilon from 0.1 to 2.
    """
    if omega <= 0 or epsilon <= 0:
        raise ValueError(f"wing_loss: omega and epsilon must be > 0, got omega={omega}, epsilon={epsilon}")
    magnitude = x.abs()
    c = omega - omega * math.log1p(omega / epsilon)
    return torch.where(magnitude < omega, omega * torch.log1p(magnitude / epsilon), magnitude - c)


def soft_wing_loss(x: torch.Tensor, omega1: float = 2.0, omega2: float = 20.0, epsilon: float = 0.5) -> torch.Tensor:
    """Soft Wing loss (SDFL paper eq. 9), element-wise.

    ``|x|`` for ``|x| < omega1`` (linear for small errors, unlike Wing), else
    ``omega2 * ln(1 + |x| / epsilon) + B`` with ``B = omega1 - omega2 * ln(1 + omega1 / epsilon)``,
    which makes the function continuous at ``omega1``. Its slope is NOT continuous there: it jumps
    from 1 to ``omega2 / (omega1 + epsilon)`` (= 8 with the paper's 2, 20, 0.5) -- this is how eq. 9
    is written and how the authors' release computes it. Paper values are in pixels of the 256 crop.
    """
    if omega1 <= 0 or omega2 <= 0 or epsilon <= 0:
        raise ValueError(f"soft_wing_loss: omega1, omega2, epsilon must be > 0, got {omega1}, {omega2}, {epsilon}")
    magnitude = x.abs()
    b = omega1 - omega2 * math.log1p(omega1 / epsilon)
    return torch.where(magnitude < omega1, magnitude, omega2 * torch.log1p(magnitude / epsilon) + b)


def adaptive_wing_loss(x: torch.Tensor, target: torch.Tensor | None = None, omega: float = 14.0,
                       theta: float = 0.5, epsilon: float = 1.0, alpha: float = 2.1) -> torch.Tensor:
    """Adaptive Wing loss (Wang, Bo and Fuxin, ICCV 2019), element-wise.

    ``omega * ln(1 + |x / epsilon|^(alpha - y))`` for ``|x| < theta``, else ``A |x| - C`` with
    ``A = omega * (alpha - y) * (theta/epsilon)^(alpha - y - 1) / (epsilon * (1 + (theta/epsilon)^(alpha - y)))``
    and ``C = theta * A - omega * ln(1 + (theta/epsilon)^(alpha - y))`` (value and slope continuous at
    ``theta``). ``y`` is the heatmap target value in the original (heatmap) use; for coordinates,
    ``target=None`` uses ``y = 0`` (exponent ``alpha``), the form used when AWing is applied to
    coordinate differences as a drop-in point loss. Defaults are the AWing paper's.
    """
    if omega <= 0 or theta <= 0 or epsilon <= 0:
        raise ValueError(f"adaptive_wing_loss: omega, theta, epsilon must be > 0, got {omega}, {theta}, {epsilon}")
    magnitude = x.abs()
    y = torch.zeros_like(x) if target is None else target.to(x.dtype).expand_as(x)
    power = alpha - y
    ratio = theta / epsilon
    a = omega * power * ratio ** (power - 1) / (epsilon * (1 + ratio ** power))
    c = theta * a - omega * torch.log1p(ratio ** power)
    return torch.where(magnitude < theta, omega * torch.log1p((magnitude / epsilon) ** power), a * magnitude - c)


def uniform_laplacian(neighbourhood: torch.Tensor, allow_isolated: bool = False) -> torch.Tensor:
    """The uniform Laplacian matrix of SDFL eq. 7 from a binary (N, N) neighbourhood ``M``.

    ``L[i, i] = 1``, ``L[i, j] = -1 / |N_i|`` for ``j`` in ``N_i = {j != i : M[i, j] = 1}``, else 0,
    so ``L @ P`` gives each point minus the mean of its neighbours (eq. 6 and 8 with uniform weights).
    The diagonal of ``M`` is ignored. A row without neighbours is an error, unless
    ``allow_isolated``: then its row is ``L[i, i] = 1`` alone (the point's own position), as in the
    SDFL release's Laplacian for points its one-direction edge lists give no neighbour.
    """
    if neighbourhood.ndim != 2 or neighbourhood.shape[0] != neighbourhood.shape[1]:
        raise ValueError(f"uniform_laplacian: neighbourhood must be a square (N, N) matrix, got {tuple(neighbourhood.shape)}")
    num_points = neighbourhood.shape[0]
    eye = torch.eye(num_points, dtype=torch.bool, device=neighbourhood.device)
    neighbours = (neighbourhood != 0) & ~eye
    counts = neighbours.sum(dim=1)
    if bool((counts == 0).any()) and not allow_isolated:
        lonely = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"uniform_laplacian: points {lonely} have no neighbour other than themselves")
    weights = neighbours.float() / counts.clamp(min=1)[:, None].float()
    return eye.float() - weights


def relative_location_loss(prediction: torch.Tensor, target: torch.Tensor, laplacian: torch.Tensor,
                           point_loss: Callable[[torch.Tensor], torch.Tensor] = soft_wing_loss) -> torch.Tensor:
    """Relative location loss (SDFL eq. 6-8, second term of eq. 10), element-wise over (B, N, 2).

    ``point_loss(L @ prediction - L @ target)``: the same point loss as the absolute term, applied
    to the difference of the Laplacian coordinates ``delta_i = p_i - sum_j w_ij p_j``.
    """
    if prediction.shape != target.shape or prediction.ndim != 3 or prediction.shape[-1] != 2:
        raise ValueError(f"relative_location_loss: prediction and target must both be (B, N, 2), got "
                         f"{tuple(prediction.shape)} and {tuple(target.shape)}")
    if laplacian.shape != (prediction.shape[1], prediction.shape[1]):
        raise ValueError(f"relative_location_loss: laplacian is {tuple(laplacian.shape)} but there are "
                         f"{prediction.shape[1]} points")
    laplacian = laplacian.to(prediction.dtype)
    return point_loss(torch.matmul(laplacian, prediction - target))


# Config name -> element-wise point loss. Bind non-default parameters with functools.partial.
POINT_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "l1": l1_loss,
    "l2": l2_loss,
    "wing": wing_loss,
    "soft_wing": soft_wing_loss,
    "adaptive_wing": adaptive_wing_loss,
}
