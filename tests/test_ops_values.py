"""Golden values: the ops on small matrices worked out by hand."""

import math

import numpy as np
import pytest

from keras_mtl import ops

SQ2 = math.sqrt(2.0)


@pytest.mark.parametrize(
    "grads, expected",
    [
        # orthogonal: K = I, alpha ~ 1/||g_t||  ->  (1, 1/2) / 1.5
        ([[1.0, 0.0], [0.0, 2.0]], [2 / 3, 1 / 3]),
        # 45 degrees: alpha ~ (1, 1/sqrt2) normalised; g = (1, sqrt2 - 1)
        ([[1.0, 0.0], [1.0, 1.0]], [SQ2 / (SQ2 + 1), 1 / (SQ2 + 1)]),
        # three orthogonal with norms 1, 2, 4: alpha ~ (1, 1/2, 1/4)
        ([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0]], [4 / 7, 2 / 7, 1 / 7]),
        # identical gradients: any split works, the minimum-norm one is even
        ([[3.0, 4.0], [3.0, 4.0]], [0.5, 0.5]),
    ],
)
def test_imtl_g_values(grads, expected):
    np.testing.assert_allclose(ops.imtl_g_weights(grads).numpy(), expected, rtol=1e-6)


def test_imtl_g_combined_45_degrees():
    g = ops.imtl_g([[1.0, 0.0], [1.0, 1.0]]).numpy()
    np.testing.assert_allclose(g, [1.0, SQ2 - 1.0], rtol=1e-6)
    # both projections equal 1: g . (1,0) = 1, g . (1,1)/sqrt2 = sqrt2/sqrt2
    np.testing.assert_allclose([g[0], (g[0] + g[1]) / SQ2], [1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    "grads, expected",
    [
        # (2a, 1-a) minimal at 4a = 1 - a
        ([[2.0, 0.0], [0.0, 1.0]], [0.2, 0.8]),
        # min over the line is outside the hull (a = 1.5): clamped to g_1
        ([[1.0, 0.0], [2.0, 1.0]], [1.0, 0.0]),
        # opposite gradients: 0 = (g1 + g2) / 2 is in the hull
        ([[1.0, 1.0], [-1.0, -1.0]], [0.5, 0.5]),
        # orthogonal norms 1, 2, 3: alpha ~ 1/||g||^2 = (1, 1/4, 1/9) / (49/36)
        ([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]], [36 / 49, 9 / 49, 4 / 49]),
        # g_3 = (g_1 + g_2)/2 lies inside: min norm point (0.5, 0.5) = g_3 itself
        ([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], [0.0, 0.0, 1.0]),
    ],
)
def test_mgda_frank_wolfe_values(grads, expected):
    got = ops.mgda_weights(grads).numpy()
    g = np.asarray(grads)
    np.testing.assert_allclose(got @ g, np.asarray(expected) @ g, atol=1e-7)
    if len(grads) < 3:
        np.testing.assert_allclose(got, expected, atol=1e-7)


def test_mgda_l2_normalization_values():
    # unit rows (1, 0), (0, 1): min norm (0.5, 0.5); weights on raw rows / norms
    w = ops.mgda_weights([[2.0, 0.0], [0.0, 5.0]], normalization="l2").numpy()
    np.testing.assert_allclose(w, [0.25, 0.1], rtol=1e-6)
    w = ops.mgda_weights(
        [[2.0, 0.0], [0.0, 5.0]], losses=[2.0, 5.0], normalization="loss"
    ).numpy()
    np.testing.assert_allclose(w, [0.25, 0.1], rtol=1e-6)


@pytest.mark.parametrize(
    "grads, expected",
    [
        ([[2.0, 0.0], [0.0, 1.0]], [0.2, 0.8]),
        ([[1.0, 0.0], [2.0, 1.0]], [1.5, -0.5]),  # negative: outside the hull
        ([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]], [36 / 49, 9 / 49, 4 / 49]),
        ([[1.0, 1.0], [-1.0, -1.0]], [0.5, 0.5]),
    ],
)
def test_mgda_closed_form_values(grads, expected):
    np.testing.assert_allclose(
        ops.mgda_closed_form_weights(grads).numpy(), expected, rtol=1e-6, atol=1e-7
    )


def test_mgda_closed_form_uses_paper_formula():
    """alpha_{2:T} = g_1 D^T (D D^T)^{-1}, alpha_1 = 1 - sum (appendix C.2)."""
    grads = np.array([[1.0, 0.5, 0.0, 2.0], [0.3, -1.0, 1.0, 0.0], [2.0, 0.1, 0.4, -0.7]])
    d = grads[0] - grads[1:]
    tail = grads[0] @ d.T @ np.linalg.inv(d @ d.T)
    expected = np.r_[1 - tail.sum(), tail]
    np.testing.assert_allclose(ops.mgda_closed_form_weights(grads).numpy(), expected, rtol=1e-9)


def test_imtl_g_uses_paper_formula():
    """alpha_{2:T} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum (eq. 2)."""
    grads = np.array([[1.0, 0.5, 0.0, 2.0], [0.3, -1.0, 1.0, 0.0], [2.0, 0.1, 0.4, -0.7]])
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    d = grads[0] - grads[1:]
    u = units[0] - units[1:]
    tail = grads[0] @ u.T @ np.linalg.inv(d @ u.T)
    expected = np.r_[1 - tail.sum(), tail]
    np.testing.assert_allclose(ops.imtl_g_weights(grads).numpy(), expected, rtol=1e-9)


def test_pcgrad_values():
    # g1.g2 = -1: g1' = g1 + g2/2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1)
    np.testing.assert_allclose(ops.pcgrad([[1.0, 0.0], [-1.0, 1.0]], seed=0).numpy(), [0.5, 1.5])
    np.testing.assert_allclose(ops.pcgrad_weights([[1.0, 0.0], [-1.0, 1.0]], seed=0).numpy(), [2.0, 1.5])
    # exactly opposite: both projections vanish
    np.testing.assert_allclose(ops.pcgrad([[1.0, 2.0], [-2.0, -4.0]], seed=0).numpy(), [0.0, 0.0], atol=1e-7)
    # no conflict: plain sum
    np.testing.assert_allclose(ops.pcgrad([[1.0, 0.0], [1.0, 1.0]], seed=0).numpy(), [2.0, 1.0])


def test_pcgrad_three_tasks_fixed_order():
    # task 0 projects on 2 then 1; tasks 1 and 2 on 0 first.
    grads = np.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
    orders = [[0, 2, 1], [1, 0, 2], [2, 0, 1]]
    # g0: .g2 = 0 (no conflict); .g1 = -1 -> (1,0) + (-1,1)/2 = (0.5, 0.5)
    # g1: .g0 = -1 -> (0, 1); .g2 = -1 -> (0, 1) - (0, 1) = (0, 0)
    # g2: .g0 = 0; .g1 = -1 -> (0,-1) + (-1,1)/2 = (-0.5, -0.5)
    # as coefficients: c0 = e0 + e1/2, c1 = e0 + e1 + e2, c2 = e1/2 + e2
    w = ops.pcgrad_weights(grads, orders=orders).numpy()
    np.testing.assert_allclose(w, [2.0, 2.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(w @ grads, [0.0, 0.0], atol=1e-12)


def test_loss_weighting_values():
    # DWA: r = (0.5, 1); w = 2 softmax(r / 2)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    np.testing.assert_allclose(
        ops.dwa_weights([1.0, 2.0], [2.0, 2.0]).numpy(), [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rtol=1e-6
    )
    # GLS: sqrt(1 * 4) = 2; weights L / (T L_t) = (1, 1/4)
    assert float(ops.gls_loss([1.0, 4.0])) == pytest.approx(2.0)
    np.testing.assert_allclose(ops.gls_weights([1.0, 4.0]).numpy(), [1.0, 0.25], rtol=1e-6)
    np.testing.assert_allclose(float(ops.gls_loss([2.0, 4.0, 8.0])), 4.0, rtol=1e-6)
    # IMTL-L: e^s L - s at s = (0, log 2, -1)
    np.testing.assert_allclose(
        ops.imtl_l_loss([3.0, 0.25, math.e], [0.0, math.log(2.0), -1.0]).numpy(),
        [3.0, 0.5 - math.log(2.0), 2.0],
        rtol=1e-6,
    )
