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


# ------------------------------------------- the Gramian's one-product path


def _gramian_cases():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(4, 300)).astype("float32")
    nan_row = base.copy()
    nan_row[2, 7] = np.nan
    return {
        # direct: one product, no per-row pass
        "plain": (base, None, False),
        "scales 1e-8..1e8": (base * np.array([[1e-8], [1.0], [1e4], [1e8]], "float32"), None, False),
        "NaN in an excluded row": (nan_row, [1, 1, 0, 1], False),
        # fallback: rescaled rows
        "row of 1e18 (product overflows)": (base * np.array([[1], [1e18], [1], [1]], "float32"), None, True),
        "row of 1e-15 (product underflows)": (base * np.array([[1], [1], [1e-15], [1]], "float32"), None, True),
        "zero row": (base * np.array([[1], [0], [1], [1]], "float32"), None, True),
        "NaN in an included row": (nan_row, None, True),
    }


@pytest.mark.parametrize("case", list(_gramian_cases()))
def test_included_gramian_equals_the_rescaled_gramian_of_the_included_rows(case):
    """`included_gramian` (one product when the rows allow it, else the
    rescaling path) gives the cosines and norms of `normalized_gramian` on
    `included_rows`, whichever path it takes."""
    from keras_mtl.ops import _gramian

    grads, mask, fallback = _gramian_cases()[case]
    cosines, norms, wanted, poisoned = [t.numpy() for t in _gramian.included_gramian(grads, mask)]
    clean, ref_wanted, ref_poisoned = _gramian.included_rows(grads, mask)
    ref_cosines, ref_norms = [t.numpy() for t in _gramian.normalized_gramian(clean)]
    np.testing.assert_array_equal(wanted, ref_wanted.numpy())
    assert bool(poisoned) == bool(ref_poisoned.numpy())
    if bool(poisoned):
        return
    np.testing.assert_allclose(cosines, ref_cosines, rtol=0, atol=2e-6)
    np.testing.assert_allclose(norms, ref_norms, rtol=2e-6)
    # Exact equality on the fallback path (it is the same computation), and
    # the float64 truth on every path.
    if fallback:
        np.testing.assert_array_equal(norms, ref_norms)
    g = np.asarray(grads, "float64") * (np.asarray(ref_wanted)[:, None] if mask else 1.0)
    g = np.where(np.isfinite(g), g, 0.0)
    truth = np.linalg.norm(g, axis=1)
    np.testing.assert_allclose(norms, truth, rtol=2e-6)


def test_gramian_weightings_are_scale_invariant_on_both_paths():
    """IMTL-G (Theorem 2: invariant to task loss scales) and MGDA with "l2"
    give the same weights times 1/scale whether a row scale sends the Gramian
    down the direct path (1e-4) or the rescaling one (1e18)."""
    rng = np.random.default_rng(5)
    grads = rng.normal(size=(3, 200)).astype("float32")
    base = ops.imtl_g_weights(grads).numpy().astype("float64")
    for k in (1e-4, 1e18):
        scaled = grads * np.array([[1.0], [k], [1.0]], "float32")
        w = ops.imtl_g_weights(scaled).numpy().astype("float64")
        # alpha_t g_t is unchanged: alpha_1 k = alpha_1(base) up to the normalisation
        combined = w[:, None] * scaled.astype("float64")
        expected = base[:, None] * grads.astype("float64")
        direction = combined.sum(0) / np.linalg.norm(combined.sum(0))
        np.testing.assert_allclose(direction, expected.sum(0) / np.linalg.norm(expected.sum(0)),
                                   atol=1e-5)
        m = ops.mgda_weights(scaled, normalization="l2").numpy().astype("float64")
        m0 = ops.mgda_weights(grads, normalization="l2").numpy().astype("float64")
        norms = np.linalg.norm(scaled.astype("float64"), axis=1)
        norms0 = np.linalg.norm(grads.astype("float64"), axis=1)
        np.testing.assert_allclose(m * norms, m0 * norms0, rtol=1e-5, atol=1e-7)
