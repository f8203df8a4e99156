"""Shared property suite for the gradient-combining ops (TorchJD-style asserts).

Every method runs on the same families of inputs (seeded random, rank
deficient, zero, badly scaled, nearly parallel) and must keep the properties
its paper claims.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import ops

# --- methods: grads (T, d) -> weights (T,), combined = weights @ grads --------
METHODS = {
    "imtl_g": lambda g: ops.imtl_g_weights(g),
    "mgda": lambda g: ops.mgda_weights(g),
    "mgda_l2": lambda g: ops.mgda_weights(g, normalization="l2"),
    "mgda_loss+": lambda g: ops.mgda_weights(
        g, losses=tf.fill(tf.shape(g)[:1], tf.constant(2.0, g.dtype)), normalization="loss+"
    ),
    "mgda_closed_form": lambda g: ops.mgda_closed_form_weights(g),
    "pcgrad": lambda g: ops.pcgrad_weights(g, seed=(3, 4)),
    "upgrad": lambda g: ops.upgrad_weights(g),
    "dualproj": lambda g: ops.dualproj_weights(g),
    "cagrad": lambda g: ops.cagrad_weights(g),
    "nash_mtl": lambda g: ops.nash_mtl_weights(g),
    "aligned_mtl": lambda g: ops.aligned_mtl_weights(g),
    "fairgrad": lambda g: ops.fairgrad_weights(g),
    "gradvac": lambda g: ops.gradvac_weights(
        g, tf.fill([g.shape[0], g.shape[0]], 0.5), seed=(3, 4))[0],
    "db_mtl": lambda g: ops.db_mtl_weights(g),
    "moco": lambda g: ops.moco_weights(g),
    # a loss weighting (weights 1 in, sum T out), not a weighting of G
    "excess_mtl": lambda g: ops.excess_mtl_weights(
        tf.ones(tf.shape(g)[:1], g.dtype), ops.excess_risks(g)[0], step_size=0.5),
}
ORDER_FREE = [m for m in METHODS if m not in ("pcgrad", "gradvac")]  # random orders


def _random(num_tasks, dim=24, seed=0):
    return np.random.default_rng(seed).normal(size=(num_tasks, dim))


def _inputs():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(3, 6))
    scales = np.logspace(-8, 8, 5)[:, None]
    cases = {
        "random_t2": _random(2),
        "random_t5": _random(5, seed=2),
        "random_t12": _random(12, dim=40, seed=3),
        "more_tasks_than_dims": _random(6, dim=3, seed=4),
        "duplicate_rows": np.concatenate([base, base[:2]], axis=0),
        "one_zero_row": np.concatenate([base, np.zeros((1, 6))], axis=0),
        "all_zero": np.zeros((4, 6)),
        "badly_scaled": _random(5, dim=8, seed=5) * scales,
        "nearly_parallel": base[:1] + 1e-4 * rng.normal(size=(3, 6)),
        "opposite": np.array([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]]),
    }
    return cases


INPUTS = _inputs()


def _weights(method, grads, dtype="float64"):
    g = tf.constant(grads, dtype)
    w = METHODS[method](g)
    assert w.dtype == g.dtype
    return w.numpy().astype("float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_shape_and_finite(method, dtype):
    for case, grads in sorted(INPUTS.items()):
        w = _weights(method, grads, dtype)
        assert w.shape == (grads.shape[0],), case
        assert np.all(np.isfinite(w)), (case, w)
        assert np.all(np.isfinite(w @ grads)), case


@pytest.mark.parametrize("case", ["random_t5", "random_t12", "badly_scaled"])
@pytest.mark.parametrize("method", ORDER_FREE)
def test_permuting_tasks_permutes_weights(method, case):
    grads = INPUTS[case]
    perm = np.random.default_rng(7).permutation(grads.shape[0])
    w = _weights(method, grads)
    w_perm = _weights(method, grads[perm])
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_permutation_two_tasks(method):
    grads = np.array([[1.0, 0.2, -0.3], [-0.8, 1.0, 0.1]])
    w = _weights(method, grads)
    np.testing.assert_allclose(_weights(method, grads[::-1]), w[::-1], rtol=1e-9)


@pytest.mark.parametrize("case", ["random_t5", "random_t12"])
@pytest.mark.parametrize(
    "method",
    ["imtl_g", "mgda", "mgda_closed_form", "pcgrad", "upgrad", "dualproj", "cagrad", "gradvac",
     "db_mtl"],
)
def test_scaling_all_gradients_keeps_weights(method, case):
    grads = INPUTS[case]
    for c in (1e-6, 3.0, 1e6):
        np.testing.assert_allclose(
            _weights(method, c * grads), _weights(method, grads), rtol=1e-6
        )


# --- edge cases: one task, no task, zero-dimensional and non-finite gradients ---
# The methods below are checked; a new method joins by adding its values to
# SINGLE_TASK_WEIGHT / ZERO_DIM_WEIGHTS and its masked form to MASKED.
RUN_MODES = {
    "eager": lambda f: f,
    "function": lambda f: tf.function(f),
    "xla": lambda f: tf.function(f, jit_compile=True),
}
# T = 1: the weight that makes `weights @ grads` the method's combined gradient
# for g = (3, 4), ||g|| = 5: "l2" divides by ||g||, "loss+" by L ||g|| = 2 * 5.
SINGLE_TASK_WEIGHT = {
    "imtl_g": 1.0, "mgda": 1.0, "mgda_closed_form": 1.0, "pcgrad": 1.0,
    "mgda_l2": 0.2, "mgda_loss+": 0.1,
    # projections of g on its own dual cone: g; CAGrad: g0 + c ||g0|| g / ||g||;
    # Nash-MTL: 25 a^2 = 1; FairGrad (alpha = 2): 25 w = w^(-1/2); Aligned: B = 1.
    "upgrad": 1.0, "dualproj": 1.0, "cagrad": 1.4, "nash_mtl": 0.2, "aligned_mtl": 1.0,
    "fairgrad": 25.0 ** (-2 / 3), "gradvac": 1.0,
    # DB-MTL: max norm / own norm; MoCo: the simplex of one task; ExcessMTL: sum T = 1
    "db_mtl": 1.0, "moco": 1.0, "excess_mtl": 1.0,
}
# d = 0: every gradient is the zero vector; the weights of the ops of this file.
ZERO_DIM_WEIGHTS = {
    "imtl_g": 1 / 3, "mgda": 1 / 3, "mgda_closed_form": 1 / 3, "pcgrad": 1.0,
    "mgda_l2": 0.0, "mgda_loss+": 0.0,  # normaliser ||g_t|| = 0 leaves 0
    # zero rows constrain nothing and get 0; CAGrad keeps the mean
    "upgrad": 0.0, "dualproj": 0.0, "cagrad": 1 / 3, "nash_mtl": 0.0, "aligned_mtl": 0.0,
    "fairgrad": 0.0, "gradvac": 0.0,
    # MoCo keeps the uniform start; ExcessMTL's zero risks keep the weights 1
    "db_mtl": 0.0, "moco": 1 / 3, "excess_mtl": 1.0,
}


# Each mode runs the shapes that once failed there (XLA compiles are slow):
# T = 1 broke `tf.while_loop` shapes when traced, T = 0 an XLA slice, d = 0
# the CPU `eigh` (a -inf row peak).
EDGE_SHAPES = {
    "eager": [(1, 2), (0, 4), (3, 0), (1, 0)],
    "function": [(1, 2), (3, 0), (1, 0)],
    "xla": [(1, 2), (0, 4)],
}


# "mgda_l2" shares the traced code of "mgda_loss+": eager only, to save time.
@pytest.mark.parametrize(
    "method, mode",
    [(m, mode) for m in sorted(SINGLE_TASK_WEIGHT) for mode in sorted(RUN_MODES)
     if mode == "eager" or m != "mgda_l2"],
)
def test_one_task_no_task_and_zero_dim(method, mode):
    run = RUN_MODES[mode](METHODS[method])
    for shape in EDGE_SHAPES[mode]:
        grads = tf.constant([[3.0, 4.0]]) if shape == (1, 2) else tf.zeros(shape)
        w = run(grads).numpy()
        assert w.shape == shape[:1] and np.all(np.isfinite(w)), (shape, w)
        if shape == (1, 2):
            np.testing.assert_allclose(w, [SINGLE_TASK_WEIGHT[method]], rtol=1e-6)
        elif shape == (3, 0):
            np.testing.assert_allclose(w, ZERO_DIM_WEIGHTS[method], rtol=1e-6)
        elif shape == (1, 0):  # one zero gradient: weight 1 or, normalised, 0
            np.testing.assert_allclose(w, [min(1.0, 3 * ZERO_DIM_WEIGHTS[method])])


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_single_task_combined_gradient_is_the_gradient(mode):
    g = tf.constant([[3.0, -1.0, 2.0]])
    for combine in (lambda x: ops.pcgrad(x, seed=(1, 2)), ops.imtl_g):
        np.testing.assert_array_equal(RUN_MODES[mode](combine)(g).numpy(), g.numpy()[0])
    np.testing.assert_array_equal(RUN_MODES[mode](ops.pcgrad)(tf.zeros([0, 3])).numpy(), 0.0)


def _losses_of(g):
    """Loss 2 per task, NaN where the task's row is not finite."""
    finite = tf.reduce_all(tf.math.is_finite(g), axis=1)
    return tf.where(finite, tf.constant(2.0, g.dtype), tf.constant(np.nan, g.dtype))


MASKED = {
    "imtl_g": lambda g, m: ops.imtl_g_weights(g, mask=m),
    "mgda": lambda g, m: ops.mgda_weights(g, mask=m),
    "mgda_loss+": lambda g, m: ops.mgda_weights(
        g, losses=_losses_of(g), normalization="loss+", mask=m
    ),
    "mgda_closed_form": lambda g, m: ops.mgda_closed_form_weights(g, mask=m),
    "pcgrad": lambda g, m: ops.pcgrad_weights(g, seed=(3, 4), mask=m),
    "imtl_g_combined": lambda g, m: ops.imtl_g(g, mask=m),
    "pcgrad_combined": lambda g, m: ops.pcgrad(g, seed=(3, 4), mask=m),
    "upgrad": lambda g, m: ops.upgrad_weights(g, mask=m),
    "dualproj": lambda g, m: ops.dualproj_weights(g, mask=m),
    "cagrad": lambda g, m: ops.cagrad_weights(g, mask=m),
    "nash_mtl": lambda g, m: ops.nash_mtl_weights(g, mask=m),
    "aligned_mtl": lambda g, m: ops.aligned_mtl_weights(g, mask=m),
    "fairgrad": lambda g, m: ops.fairgrad_weights(g, mask=m),
    "gradvac": lambda g, m: ops.gradvac_weights(
        g, tf.fill([g.shape[0], g.shape[0]], 0.5), seed=(3, 4), mask=m)[0],
    "upgrad_combined": lambda g, m: ops.upgrad(g, mask=m),
    "db_mtl": lambda g, m: ops.db_mtl_weights(g, mask=m),
    "moco": lambda g, m: ops.moco_weights(g, mask=m),
    "excess_mtl": lambda g, m: ops.excess_mtl_weights(
        tf.ones(tf.shape(g)[:1], g.dtype), ops.excess_risks(g, mask=m)[0], step_size=0.5,
        mask=m),
}
NON_FINITE_ROWS = {
    "nan": [np.nan] * 5,
    "inf": [1.0, np.inf, 0.0, 2.0, -1.0],
    "mixed": [-np.inf, np.nan, np.inf, 0.0, 1e30],
}


@pytest.mark.parametrize(
    "method, mode",
    [(m, "eager") for m in sorted(MASKED)]
    + [(m, "xla") for m in ("imtl_g", "mgda", "mgda_closed_form", "pcgrad_combined")],
)
def test_masked_non_finite_row_changes_nothing(method, mode):
    """An excluded task's row is never read: NaN/inf there gives bitwise the
    result of a zero row (tf.where, no NaN * 0)."""
    run = RUN_MODES[mode](MASKED[method])
    grads = _random(4, dim=5, seed=13)
    mask = tf.constant([True, True, False, True])
    for dtype in ("float32", "float64") if mode == "eager" else ("float64",):
        zeroed = grads.copy()
        zeroed[2] = 0.0
        want = run(tf.constant(zeroed, dtype), mask).numpy()
        assert np.all(np.isfinite(want)) and np.any(want != 0), want
        for name, row in sorted(NON_FINITE_ROWS.items()):
            bad = grads.copy()
            bad[2] = row
            got = run(tf.constant(bad, dtype), mask).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {dtype}")


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("method", sorted(MASKED))
def test_included_non_finite_row_gives_nan_never_an_error(method, mode):
    """A NaN/inf gradient of an included task must not crash `eigh`
    ("Self-adjoint eigen decomposition was not successful"): all-NaN output,
    which the caller's non-finite check sees."""
    run = RUN_MODES[mode](MASKED[method])
    for name, row in sorted(NON_FINITE_ROWS.items()):
        bad = _random(4, dim=5, seed=13)
        bad[1] = row
        got = run(tf.constant(bad), tf.constant([True, True, False, True])).numpy()
        assert np.all(np.isnan(got)), (name, got)


def test_gramian_of_zero_dim_rows_is_zero():
    cosines, norms = ops.normalized_gramian(tf.zeros([3, 0]))
    np.testing.assert_array_equal(cosines.numpy(), np.zeros((3, 3)))
    np.testing.assert_array_equal(norms.numpy(), np.zeros(3))


def test_gls_absent_nan_loss_changes_nothing():
    nan = float("nan")
    assert ops.gls_loss([1.0, nan, 4.0], present=[1, 0, 1]).numpy() == 2.0
    np.testing.assert_array_equal(
        ops.gls_weights([1.0, nan, 4.0], present=[1, 0, 1]).numpy(),
        ops.gls_weights([1.0, 0.0, 4.0], present=[1, 0, 1]).numpy(),
    )


# --- IMTL-G ------------------------------------------------------------------
FULL_RANK = ["random_t2", "random_t5", "random_t12", "badly_scaled", "opposite"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", FULL_RANK)
def test_imtl_g_equal_projections_and_unit_sum(case, dtype):
    grads = INPUTS[case]
    w = _weights("imtl_g", grads, dtype)
    assert abs(w.sum() - 1.0) < 1e-5
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    proj = units @ (w @ grads)
    tol = 1e-4 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(proj, proj[0], rtol=tol, atol=tol * np.abs(proj).max())


@pytest.mark.parametrize("case", ["random_t5", "random_t12"])
def test_imtl_g_scale_invariance(case):
    """Theorem 2 / Table 1: scaling task losses by k_t > 0 keeps the direction."""
    grads = INPUTS[case]
    k = np.random.default_rng(9).choice([1e-8, 1e-3, 0.5, 10.0, 1e8], size=len(grads))
    for dtype in ("float32", "float64"):
        g = _weights("imtl_g", grads, dtype) @ grads
        g_scaled = _weights("imtl_g", k[:, None] * grads, dtype) @ (k[:, None] * grads)
        cos = g @ g_scaled / np.linalg.norm(g) / np.linalg.norm(g_scaled)
        assert cos > 1 - 1e-6, cos


def test_imtl_g_equal_angles_is_gradnorm_solution():
    """Lemma 3 / Corollary 4: with equal pairwise angles alpha_t ~ 1 / ||g_t||."""
    norms = np.array([0.5, 2.0, 7.0])
    grads = np.eye(3) * norms[:, None]  # orthogonal: equal angles
    w = _weights("imtl_g", grads)
    np.testing.assert_allclose(w, (1 / norms) / (1 / norms).sum(), rtol=1e-12)


def test_imtl_g_degenerate_inputs():
    base = INPUTS["duplicate_rows"]
    w = _weights("imtl_g", base)
    units = base / np.linalg.norm(base, axis=1, keepdims=True)
    proj = units @ (w @ base)
    np.testing.assert_allclose(proj, proj[0], rtol=1e-8)  # duplicates are harmless
    w = _weights("imtl_g", INPUTS["one_zero_row"])
    assert w[-1] == 0.0 and abs(w.sum() - 1) < 1e-12
    np.testing.assert_allclose(_weights("imtl_g", INPUTS["all_zero"]), np.full(4, 0.25))
    masked = ops.imtl_g_weights(INPUTS["random_t5"], mask=[1, 1, 0, 1, 0]).numpy()
    np.testing.assert_allclose(masked[[2, 4]], 0.0)
    np.testing.assert_allclose(
        masked[[0, 1, 3]], _weights("imtl_g", INPUTS["random_t5"][[0, 1, 3]]), rtol=1e-9
    )


# --- MGDA ----------------------------------------------------------------------
def _check_min_norm_kkt(grads, w, rtol):
    gram = grads @ grads.T
    m_w = gram @ w
    norm2 = w @ m_w
    norms = np.sqrt(np.diag(gram))
    # rounding bound of (M w)_t: eps-level relative to ||g_t|| sum_k w_k ||g_k||
    noise = 1e-12 * norms * (w @ norms)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-9
    # KKT: (M w)_t >= w^T M w for every t, with equality on the support.
    assert np.all(m_w >= norm2 * (1 - rtol) - noise), (m_w - norm2, noise)
    support = w > 1e-12 * w.max()
    assert np.all(np.abs(m_w - norm2)[support] <= rtol * norm2 + noise[support]), (
        m_w - norm2, noise)
    return m_w, norm2


@pytest.mark.parametrize(
    "case",
    ["random_t2", "random_t5", "random_t12", "more_tasks_than_dims",
     "duplicate_rows", "badly_scaled", "nearly_parallel", "opposite"],
)
def test_mgda_min_norm_kkt_and_descent(case):
    grads = INPUTS[case]
    w = _weights("mgda", grads)
    m_w, norm2 = _check_min_norm_kkt(grads, w, rtol=1e-8)
    # every task's gradient has a non-negative inner product with the result
    assert np.all(m_w >= -1e-12 * np.abs(grads @ grads.T).max())


@pytest.mark.parametrize("case", ["random_t5", "badly_scaled", "nearly_parallel"])
def test_mgda_float32_inputs_descent(case):
    grads = INPUTS[case]
    w = _weights("mgda", grads, "float32")
    g32 = grads.astype("float32").astype("float64")
    combined = w @ g32
    cos = (g32 @ combined) / np.linalg.norm(g32, axis=1) / max(np.linalg.norm(combined), 1e-300)
    assert np.all(cos >= -1e-5), cos


def test_mgda_matches_brute_force_on_random_triples():
    """Exact min-norm on the simplex by enumerating faces, vs Frank-Wolfe."""
    rng = np.random.default_rng(11)
    for trial in range(20):
        grads = rng.normal(size=(3, 4)) * rng.choice([1e-3, 1.0, 1e3], size=(3, 1))
        best = None
        for face in ([0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]):
            sub = grads[face]
            m = sub @ sub.T
            kkt = np.block([[m, np.ones((len(face), 1))], [np.ones((1, len(face))), 0]])
            sol = np.linalg.lstsq(kkt, np.r_[np.zeros(len(face)), 1.0], rcond=None)[0]
            a = sol[: len(face)]
            if np.all(a >= -1e-12):
                w = np.zeros(3)
                w[face] = a
                val = np.sum((w @ grads) ** 2)
                if best is None or val < best[0]:
                    best = (val, w)
        w = _weights("mgda", grads)
        assert np.sum((w @ grads) ** 2) <= best[0] * (1 + 1e-9) + 1e-300
        np.testing.assert_allclose(w, best[1], atol=1e-6)


def test_mgda_frank_wolfe_converges_from_the_best_pair():
    """Two tasks: the best pair is exact (no step); T = 12: the duality-gap
    tolerance is met long before the iteration cap."""
    for case, most in (("random_t2", 0), ("opposite", 0), ("random_t12", 200), ("badly_scaled", 200)):
        grads = INPUTS[case]
        alpha, iters = ops.min_norm_weights_from_gramian(
            grads @ grads.T, return_iterations=True
        )
        assert int(iters) <= most, (case, int(iters))
        _check_min_norm_kkt(grads, alpha.numpy(), rtol=1e-8)


def test_mgda_warm_start_certifies_at_once_and_bad_starts_are_ignored():
    """From the previous solution: no step, same weights; an unusable start
    (NaN, negative, all zero, masked-only mass) changes nothing."""
    for case in ("random_t12", "badly_scaled", "more_tasks_than_dims"):
        grads = INPUTS[case]
        gram = grads @ grads.T
        cold, _ = ops.min_norm_weights_from_gramian(gram, return_iterations=True)
        warm, iters = ops.min_norm_weights_from_gramian(
            gram, return_iterations=True, initial=cold)
        assert int(iters) == 0, case
        np.testing.assert_allclose(warm.numpy(), cold.numpy(), atol=1e-12)
        num = len(grads)
        for bad in (np.full(num, np.nan), -np.ones(num), np.zeros(num)):
            got = ops.min_norm_weights_from_gramian(gram, initial=bad).numpy()
            _check_min_norm_kkt(grads, got, rtol=1e-8)
    # A start from a nearby problem: still the exact (KKT) answer.
    rng = np.random.default_rng(5)
    grads = INPUTS["random_t12"]
    moved = grads + 0.05 * rng.normal(size=grads.shape)
    start = ops.min_norm_weights_from_gramian(grads @ grads.T)
    w = ops.min_norm_weights_from_gramian(moved @ moved.T, initial=start).numpy()
    _check_min_norm_kkt(moved, w, rtol=1e-8)
    # mgda_weights: the returned alpha warm-starts the next call.
    w1, alpha = ops.mgda_weights(moved, normalization="loss+", losses=np.arange(1.0, 13.0),
                                 return_alpha=True)
    w2 = ops.mgda_weights(moved, normalization="loss+", losses=np.arange(1.0, 13.0),
                          initial=alpha)
    np.testing.assert_allclose(w2.numpy(), w1.numpy(), rtol=1e-9, atol=1e-15)


def test_mgda_balancer_keeps_its_warm_start_as_state():
    from keras_mtl import balancers

    bal = balancers.MGDA()
    bal.build([f"t{i}" for i in range(12)])
    assert any("warm_start" in v.path for v in bal.state_variables())
    grads = tf.constant(INPUTS["random_t12"], "float32")
    present = tf.ones([12])
    bal.aggregate(grads, tf.ones([12]), present)
    alpha = bal.alpha.numpy()
    assert abs(alpha.sum() - 1) < 1e-6 and np.all(alpha >= 0)
    np.testing.assert_allclose(alpha, bal.last_weights.numpy(), rtol=1e-6, atol=1e-7)
    assert not hasattr(balancers.MGDA(solver="closed_form"), "alpha")


def test_mgda_zero_row_and_mask():
    w = _weights("mgda", INPUTS["one_zero_row"])
    np.testing.assert_allclose(w, [0, 0, 0, 1])  # the zero gradient is the min
    grads = INPUTS["random_t5"]
    masked = ops.mgda_weights(grads, mask=[True, False, True, True, False]).numpy()
    np.testing.assert_allclose(masked[[1, 4]], 0.0)
    np.testing.assert_allclose(masked[[0, 2, 3]], _weights("mgda", grads[[0, 2, 3]]), atol=1e-9)


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalized_is_min_norm_of_normalized_rows(normalization):
    grads = INPUTS["random_t5"]
    losses = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    w = ops.mgda_weights(grads, losses=losses, normalization=normalization).numpy()
    c = ops.mgda_normalizers(grads, losses, normalization).numpy()
    alpha = w * c  # weights on the normalised rows
    _check_min_norm_kkt(grads / c[:, None], alpha, rtol=1e-8)


@pytest.mark.parametrize("case", FULL_RANK + ["more_tasks_than_dims", "duplicate_rows"])
def test_mgda_closed_form_is_affine_min_norm(case):
    grads = INPUTS[case]
    w = _weights("mgda_closed_form", grads)
    assert abs(w.sum() - 1) < 1e-9
    combined = w @ grads
    # g . (g_1 - g_t) = 0 for all t (appendix C.2, eq. 28): equal g . g_t
    inner = grads @ combined
    norms = np.linalg.norm(grads, axis=1)
    scale = norms.max() * np.linalg.norm(combined) + 1e-4 * norms.max() ** 2
    np.testing.assert_allclose(inner, inner[0], atol=1e-9 * scale)
    # no other affine combination is shorter
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(size=len(grads))
        v -= v.mean()
        other = (w + 1e-3 * v) @ grads
        assert other @ other >= combined @ combined * (1 - 1e-9)


def test_mgda_closed_form_agrees_with_frank_wolfe_when_interior():
    grads = np.eye(4) * np.array([1.0, 2.0, 3.0, 4.0])[:, None]
    np.testing.assert_allclose(
        _weights("mgda_closed_form", grads), _weights("mgda", grads), rtol=1e-8
    )


# --- PCGrad ----------------------------------------------------------------------
def _pcgrad_reference(grads, orders):
    out = np.zeros(grads.shape[1])
    for i in range(len(grads)):
        g = grads[i].copy()
        for j in orders[i]:
            if j == i:
                continue
            dot = g @ grads[j]
            if dot < 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        out += g
    return out


@pytest.mark.parametrize("case", ["random_t5", "random_t12", "badly_scaled", "opposite"])
def test_pcgrad_matches_algorithm_1(case):
    grads = INPUTS[case]
    seed = tf.constant([5, 6], "int64")
    orders = ops.pcgrad_task_orders(len(grads), seed).numpy()
    assert all(sorted(row) == list(range(len(grads))) for row in orders)
    got = ops.pcgrad(tf.constant(grads), seed=seed).numpy()
    want = _pcgrad_reference(grads, orders)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(grads).max())


def test_pcgrad_two_conflicting_has_no_negative_projection():
    rng = np.random.default_rng(12)
    for _ in range(50):
        g1 = rng.normal(size=6)
        g2 = rng.normal(size=6)
        if g1 @ g2 >= 0:
            g2 = -g2
        combined = ops.pcgrad(np.stack([g1, g2]), seed=0).numpy()
        assert combined @ g1 >= -1e-12 and combined @ g2 >= -1e-12


def test_pcgrad_non_conflicting_is_the_sum():
    grads = np.abs(_random(6))  # all pairwise inner products positive
    np.testing.assert_allclose(ops.pcgrad(grads, seed=1).numpy(), grads.sum(0), rtol=1e-12)


def test_pcgrad_seeded_orders_are_deterministic_and_vary():
    a = ops.pcgrad_task_orders(8, seed=(0, 1)).numpy()
    b = ops.pcgrad_task_orders(8, seed=(0, 1)).numpy()
    c = ops.pcgrad_task_orders(8, seed=(0, 2)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --- IMTL-L and loss weightings ----------------------------------------------------
def test_imtl_l_optimum_scales_loss_to_one():
    losses = tf.constant([0.01, 0.7, 3.0, 250.0])
    s = tf.Variable(tf.zeros(4))
    for _ in range(40):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(ops.imtl_l_loss(losses, s))
        grad = tape.gradient(total, s)
        # damped Newton step (convex in s): s -= clip((e^s L - 1) / (e^s L))
        s.assign_sub(tf.clip_by_value(grad / (tf.exp(s) * losses), -1.0, 1.0))
    np.testing.assert_allclose((tf.exp(s) * losses).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(s.numpy(), ops.imtl_l_optimal_log_scales(losses).numpy(), rtol=1e-5)


def test_gls_gradient_is_reciprocal_loss_weighting():
    theta = tf.Variable([0.3, -1.2, 2.0])
    with tf.GradientTape(persistent=True) as tape:
        losses = tf.stack([tf.reduce_sum(theta**2), tf.exp(theta[1]) + 1.0, (theta[2] - 5.0) ** 2])
        total = ops.gls_loss(losses)
    grad = tape.gradient(total, theta).numpy()
    jac = tape.jacobian(losses, theta).numpy()
    w = ops.gls_weights(losses).numpy()
    np.testing.assert_allclose(grad, w @ jac, rtol=1e-5)
    np.testing.assert_allclose(total.numpy(), np.prod(losses.numpy()) ** (1 / 3), rtol=1e-6)


def test_gls_absent_tasks_are_left_out():
    np.testing.assert_allclose(ops.gls_loss([4.0, 123.0, 9.0], present=[1, 0, 1]).numpy(), 6.0)
    np.testing.assert_allclose(ops.gls_weights([4.0, 123.0, 9.0], [1, 0, 1]).numpy()[1], 0.0)
    assert ops.gls_loss([0.0, 2.0], present=[0, 0]).numpy() == 0.0


def test_dwa_weights_sum_to_num_tasks_and_favour_stalling_tasks():
    prev = tf.constant([0.5, 1.0, 0.9, 3.0])
    earlier = tf.constant([1.0, 1.0, 0.3, 3.0])
    w = ops.dwa_weights(prev, earlier).numpy()
    np.testing.assert_allclose(w.sum(), 4.0, rtol=1e-6)
    assert w[2] > w[1] > w[0]  # ratios 3 > 1 > 0.5
    np.testing.assert_allclose(ops.dwa_weights(prev, earlier, temperature=1e6).numpy(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        ops.dwa_weights(prev, earlier, temperature=0.0)


def test_rlw_weights_on_simplex_deterministic_and_masked():
    a = ops.rlw_weights(5, seed=(1, 10)).numpy()
    np.testing.assert_allclose(a.sum(), 1.0, rtol=1e-6)
    assert np.all(a > 0)
    np.testing.assert_array_equal(a, ops.rlw_weights(5, seed=(1, 10)).numpy())
    assert not np.allclose(a, ops.rlw_weights(5, seed=(1, 11)).numpy())
    m = ops.rlw_weights(5, seed=(1, 10), present=[1, 0, 1, 0, 0]).numpy()
    np.testing.assert_allclose(m[[1, 3, 4]], 0.0)
    np.testing.assert_allclose(m.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(m[0] / m[2], a[0] / a[2], rtol=1e-5)
    np.testing.assert_array_equal(ops.rlw_weights(3, seed=0, present=[0, 0, 0]).numpy(), 0.0)
    # mean of many draws is uniform (symmetric distribution)
    mean = np.mean([ops.rlw_weights(4, seed=(2, s)).numpy() for s in range(400)], axis=0)
    np.testing.assert_allclose(mean, 0.25, atol=0.02)


def test_invalid_arguments_say_what_was_received():
    with pytest.raises(ValueError, match="rank 2"):
        ops.imtl_g_weights([1.0, 2.0])
    with pytest.raises(ValueError, match="normalization"):
        ops.mgda_weights([[1.0, 0.0]], normalization="l1")
    with pytest.raises(ValueError, match="losses"):
        ops.mgda_weights([[1.0, 0.0]], normalization="loss")
    with pytest.raises(ValueError, match="distribution"):
        ops.rlw_weights(2, distribution="cauchy")
