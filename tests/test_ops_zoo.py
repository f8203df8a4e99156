"""The papers' guarantees of the zoo ops (UPGrad, DualProj, CAGrad, Nash-MTL,
Aligned-MTL, FAMO, FairGrad, GradVac, GradDrop, STCH, RLW, DB-MTL, MoCo, ExcessMTL).

Reference values come from NumPy/SciPy written from each paper's equations
(an NNLS for the dual-cone projections, SLSQP on CAGrad's dual, an
eigendecomposition for Aligned-MTL). The shared properties (shapes, finite
values, permutations, scales) are in test_ops_properties.py.
"""

import itertools

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

from keras_mtl import ops


def _random(num_tasks, dim, seed, scales=None):
    g = np.random.default_rng(seed).normal(size=(num_tasks, dim))
    return g if scales is None else g * np.asarray(scales)[:, None]


CASES = {
    "t2": _random(2, 10, 0),
    "t5": _random(5, 24, 1),
    "t12": _random(12, 40, 2),
    "more_tasks_than_dims": _random(6, 3, 3),
    "duplicate_rows": np.concatenate([_random(3, 6, 4), _random(3, 6, 4)[:2]]),
    "badly_scaled": _random(5, 8, 5, scales=np.logspace(-8, 8, 5)),
    "nearly_parallel": _random(1, 6, 6) + 1e-4 * _random(3, 6, 7),
    "opposite": np.array([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]]),
    "zero_row": np.concatenate([_random(3, 6, 8), np.zeros((1, 6))]),
}
FULL_RANK = ["t2", "t5", "t12"]


def _w(fn, grads, **kwargs):
    return fn(tf.constant(grads, "float64"), **kwargs).numpy()


def _dual_cone_projection(grads, u):
    """Proposition 1 of Quinton & Rey: J^T v, v = u + argmin_{l >= 0} ||J^T (u + l)||."""
    lam, _ = scipy.optimize.nnls(grads.T, -grads.T @ u, maxiter=10_000)
    return (u + lam) @ grads


def _assert_no_conflict(grads, direction, rtol=1e-9):
    norms = np.linalg.norm(grads, axis=1)
    inner = grads @ direction
    bound = rtol * norms * max(np.linalg.norm(direction), norms.max())
    assert np.all(inner >= -bound), (inner, bound)


# --- UPGrad / DualProj -----------------------------------------------------------
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_dual_cone_output_conflicts_with_no_task(method, case):
    fn = {"upgrad": ops.upgrad_weights, "dualproj": ops.dualproj_weights}[method]
    grads = CASES[case]
    w = _w(fn, grads)
    _assert_no_conflict(grads, w @ grads)
    if case == "zero_row":
        assert w[-1] == 0.0


@pytest.mark.parametrize("case", FULL_RANK + ["more_tasks_than_dims", "badly_scaled"])
def test_upgrad_is_mean_of_projections(case):
    grads = CASES[case]
    num = len(grads)
    want = np.mean([_dual_cone_projection(grads, np.eye(num)[i]) for i in range(num)], 0)
    got = _w(ops.upgrad_weights, grads) @ grads
    scale = np.linalg.norm(grads, axis=1).max()
    np.testing.assert_allclose(got, want, atol=1e-8 * scale, rtol=1e-7)


@pytest.mark.parametrize("case", FULL_RANK + ["more_tasks_than_dims", "badly_scaled"])
def test_dualproj_is_projection_of_mean(case):
    grads = CASES[case]
    want = _dual_cone_projection(grads, np.full(len(grads), 1 / len(grads)))
    got = _w(ops.dualproj_weights, grads) @ grads
    scale = np.linalg.norm(grads, axis=1).max()
    np.testing.assert_allclose(got, want, atol=1e-8 * scale, rtol=1e-7)


def test_dualproj_returns_a_non_conflicting_mean_unchanged():
    grads = np.array([[1.0, 0.0, 0.3], [-0.2, 1.0, 0.0], [0.1, 0.4, 1.0]])
    assert (grads @ grads.T).min() < 0  # one pair conflicts, the mean does not
    assert np.all(grads @ grads.mean(0) > 0)
    np.testing.assert_allclose(_w(ops.dualproj_weights, grads), np.full(3, 1 / 3), rtol=1e-12)


def test_upgrad_without_conflicts_is_the_mean_and_resolves_a_conflict():
    grads = np.abs(_random(4, 7, 9))
    np.testing.assert_allclose(_w(ops.upgrad_weights, grads), np.full(4, 0.25), rtol=1e-12)
    # two conflicting gradients: each is projected on the other's normal plane
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(_w(ops.upgrad_weights, g) @ g, [0.25, 0.75], rtol=1e-12)


def test_dual_cone_ops_respect_mask_and_preferences():
    grads = CASES["t5"]
    mask = np.array([1, 0, 1, 1, 0], bool)
    for fn in (ops.upgrad_weights, ops.dualproj_weights):
        w = _w(fn, grads, mask=mask)
        np.testing.assert_allclose(w[~mask], 0.0)
        np.testing.assert_allclose(w[mask], _w(fn, grads[mask]), rtol=1e-9, atol=1e-12)
    prefs = np.array([0.5, 0.1, 0.1, 0.2, 0.1])
    want = _dual_cone_projection(grads, prefs)
    got = _w(ops.dualproj_weights, grads, preferences=prefs) @ grads
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


# --- CAGrad ---------------------------------------------------------------------
def _cagrad_dual_value(grads, w, c):
    g0 = grads.mean(0)
    gw = w @ grads
    return gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw)


def _cagrad_reference(grads, c):
    """The dual of eq. 3 over the simplex by SLSQP, as in the authors' code."""
    num = len(grads)
    res = scipy.optimize.minimize(
        lambda w: _cagrad_dual_value(grads, w, c), np.full(num, 1 / num),
        bounds=[(0, 1)] * num, constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
        method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000},
    )
    return res.fun


@pytest.mark.parametrize("case", sorted(CASES))
def test_cagrad_c_zero_is_the_mean(case):
    grads = CASES[case]
    np.testing.assert_allclose(
        _w(ops.cagrad_weights, grads, c=0.0), np.full(len(grads), 1 / len(grads)), rtol=1e-15
    )


@pytest.mark.parametrize("c", [0.1, 0.4, 1.0, 5.0])
@pytest.mark.parametrize("case", FULL_RANK + ["more_tasks_than_dims", "nearly_parallel"])
def test_cagrad_stays_in_the_ball_and_is_optimal(case, c):
    grads = CASES[case]
    num = len(grads)
    w = _w(ops.cagrad_weights, grads, c=c)
    d = w @ grads
    g0 = grads.mean(0)
    # the constraint of eq. 3 (active at the optimum)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-9)
    # strong duality: the worst task's projection on d equals the dual value
    dual = (w - 1 / num) / np.sum(w - 1 / num)
    primal = np.min(grads @ d)
    value = _cagrad_dual_value(grads, dual, c)
    scale = np.abs(grads @ d).max()
    assert abs(value - primal) <= 1e-7 * scale, (value, primal)
    # and no SLSQP solution of the dual is lower
    assert value <= _cagrad_reference(grads, c) + 1e-7 * scale


def test_cagrad_large_c_tends_to_min_norm_direction_and_rescale():
    grads = CASES["t5"]
    d = _w(ops.cagrad_weights, grads, c=1e4) @ grads
    mgda = _w(ops.mgda_weights, grads) @ grads
    cos = d @ mgda / np.linalg.norm(d) / np.linalg.norm(mgda)
    assert cos > 1 - 1e-6, cos
    np.testing.assert_allclose(
        _w(ops.cagrad_weights, grads, c=0.4, rescale=True),
        _w(ops.cagrad_weights, grads, c=0.4) / 1.16, rtol=1e-12,
    )
    with pytest.raises(ValueError, match="c=-1"):
        ops.cagrad_weights(grads, c=-1)


def test_cagrad_mask_leaves_tasks_out_of_mean_and_dual():
    grads = CASES["t5"]
    mask = np.array([1, 1, 0, 1, 1], bool)
    w = _w(ops.cagrad_weights, grads, mask=mask)
    assert w[2] == 0.0
    np.testing.assert_allclose(w[mask], _w(ops.cagrad_weights, grads[mask]), rtol=1e-8)


# --- Nash-MTL -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case", FULL_RANK + ["duplicate_rows", "badly_scaled", "nearly_parallel"]
)
def test_nash_mtl_weights_solve_the_bargaining_equation(case):
    grads = CASES[case]
    alpha = _w(ops.nash_mtl_weights, grads)
    assert np.all(alpha > 0)
    # G^T G alpha = 1 / alpha, i.e. every task's share alpha_t (g_t . d) is 1
    d = alpha @ grads
    np.testing.assert_allclose(alpha * (grads @ d), 1.0, rtol=1e-7)
    np.testing.assert_allclose(d @ d, len(grads), rtol=1e-7)


def test_nash_mtl_closed_forms_normalization_and_zero_rows():
    # orthogonal gradients: alpha_t = 1 / ||g_t||
    np.testing.assert_allclose(
        _w(ops.nash_mtl_weights, np.diag([0.5, 2.0, 4.0])), [2.0, 0.5, 0.25], rtol=1e-10
    )
    grads = CASES["t5"]
    alpha = _w(ops.nash_mtl_weights, grads, normalize=True)
    gram = grads @ grads.T
    np.testing.assert_allclose(gram / np.linalg.norm(gram) @ alpha, 1 / alpha, rtol=1e-7)
    grads = CASES["zero_row"]
    alpha = _w(ops.nash_mtl_weights, grads)
    assert alpha[-1] == 0.0
    np.testing.assert_allclose(alpha[:-1], _w(ops.nash_mtl_weights, grads[:-1]), rtol=1e-9)


def test_nash_mtl_pareto_stationary_input_stays_finite():
    alpha = _w(ops.nash_mtl_weights, CASES["opposite"])
    assert np.all(np.isfinite(alpha)) and np.all(alpha > 0)
    d = alpha @ CASES["opposite"]
    assert np.linalg.norm(d) < 1e-3  # no common descent direction


# --- Aligned-MTL -----------------------------------------------------------------------
def _aligned_reference(grads):
    """Algorithm 1 of Senushkin et al. in NumPy."""
    lam, vec = np.linalg.eigh(grads @ grads.T)
    keep = lam > lam.max() * len(grads) * 10 * np.finfo("float64").eps
    lam, vec = lam[keep], vec[:, keep]
    return np.sqrt(lam.min()) * (vec / np.sqrt(lam)) @ vec.T


@pytest.mark.parametrize(
    "case", FULL_RANK + ["more_tasks_than_dims", "duplicate_rows", "zero_row"]
)
def test_aligned_mtl_system_has_condition_number_one(case):
    grads = CASES[case]
    balance = ops.aligned_mtl_balance(tf.constant(grads)).numpy()
    aligned = balance.T @ grads  # row t: the aligned gradient of task t
    sv = np.linalg.svd(aligned, compute_uv=False)
    sv = sv[sv > 1e-6 * sv.max()]
    smallest = np.linalg.svd(grads, compute_uv=False)
    smallest = smallest[smallest > 1e-6 * smallest.max()].min()
    np.testing.assert_allclose(sv, smallest, rtol=1e-8)  # condition number 1
    np.testing.assert_allclose(balance, _aligned_reference(grads), rtol=1e-7, atol=1e-9)
    w = _w(ops.aligned_mtl_weights, grads)
    np.testing.assert_allclose(w @ grads, aligned.mean(0), rtol=1e-7, atol=1e-12)


def test_aligned_mtl_orthogonal_inputs_and_preferences():
    # orthogonal rows: B = sigma_min diag(1/sigma): every aligned row has norm sigma_min
    np.testing.assert_allclose(
        _w(ops.aligned_mtl_weights, np.diag([2.0, 1.0, 4.0])), [1 / 6, 1 / 3, 1 / 12], rtol=1e-12
    )
    grads = CASES["t5"]
    prefs = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(
        _w(ops.aligned_mtl_weights, grads, preferences=prefs), _aligned_reference(grads)[:, 0],
        rtol=1e-7,
    )
    np.testing.assert_allclose(_w(ops.aligned_mtl_weights, np.zeros((3, 4))), 0.0)


# --- FAMO ------------------------------------------------------------------------------
def test_famo_logit_gradient_is_the_softmax_pullback_of_the_log_decrease():
    rng = np.random.default_rng(0)
    xi = rng.normal(size=4)
    prev = np.array([1.0, 2.0, 0.5, 3.0])
    cur = np.array([0.8, 1.9, 0.5, 1.0])
    gamma = 0.01
    got = ops.famo_logit_gradient(xi, prev, cur, gamma=gamma).numpy()
    delta = np.log(prev + 1e-8) - np.log(cur + 1e-8)
    z = np.exp(xi) / np.exp(xi).sum()
    np.testing.assert_allclose(got, z * (delta - z @ delta) + gamma * xi, rtol=1e-12)
    # = d/dxi of softmax(xi) . delta (autodiff), plus the regulariser
    v = tf.Variable(xi)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(tf.nn.softmax(v) * delta)
    np.testing.assert_allclose(got - gamma * xi, tape.gradient(y, v).numpy(), rtol=1e-10)
    # equal log-decreases leave the logits to the regulariser alone
    same = ops.famo_logit_gradient(xi, prev, prev * 0.5, gamma=gamma, epsilon=0.0).numpy()
    np.testing.assert_allclose(same, gamma * xi, rtol=1e-12)
    # absent tasks: no gradient, left out of the softmax
    masked = ops.famo_logit_gradient(xi, prev, cur, present=[1, 1, 0, 1], gamma=gamma).numpy()
    assert masked[2] == 0.0
    sub = ops.famo_logit_gradient(xi[[0, 1, 3]], prev[[0, 1, 3]], cur[[0, 1, 3]], gamma=gamma)
    np.testing.assert_allclose(masked[[0, 1, 3]], sub.numpy(), rtol=1e-12)


def test_famo_weights_give_the_gradient_of_the_log_objective():
    xi = tf.constant([0.3, -0.2, 0.5])
    losses = tf.Variable([0.7, 2.5, 0.05])
    z = tf.nn.softmax(xi)
    c = tf.reduce_sum(z / (losses + 1e-8))
    with tf.GradientTape() as tape:
        log_objective = tf.reduce_sum(z * tf.math.log(losses + 1e-8)) / c
    want = tape.gradient(log_objective, losses).numpy()
    w = ops.famo_task_weights(xi, losses).numpy()
    np.testing.assert_allclose(w, want, rtol=1e-6)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)


# --- graph and XLA ------------------------------------------------------------------------
ZOO = {
    "upgrad": ops.upgrad_weights,
    "dualproj": ops.dualproj_weights,
    "cagrad": ops.cagrad_weights,
    "nash_mtl": ops.nash_mtl_weights,
    "aligned_mtl": ops.aligned_mtl_weights,
    "fairgrad": ops.fairgrad_weights,
}


def test_zoo_ops_compile_under_xla_and_match_eager():
    grads = tf.constant(CASES["t5"], "float32")
    mask = tf.constant([1.0, 1.0, 0.0, 1.0, 1.0])
    for name, fn in ZOO.items():
        compiled = tf.function(lambda g, m, fn=fn: fn(g, mask=m), jit_compile=True)
        np.testing.assert_allclose(
            compiled(grads, mask).numpy(), fn(grads, mask=mask).numpy(), rtol=2e-5, atol=1e-7,
            err_msg=name,
        )
    # Stateless draws differ between XLA and the TF kernels on CPU (as for
    # PCGrad): the random orders are passed in, the draws checked by property.
    orders = ops.pcgrad_task_orders(5, seed=(3, 4))
    targets = tf.fill([5, 5], tf.constant(0.3, "float64"))
    compiled = tf.function(lambda g, m: ops.gradvac_weights(g, targets, orders=orders, mask=m)[0],
                           jit_compile=True)
    np.testing.assert_allclose(
        compiled(grads, mask).numpy(),
        ops.gradvac_weights(grads, targets, orders=orders, mask=mask)[0].numpy(),
        rtol=2e-5, atol=1e-7)
    seed = tf.constant([3, 4], "int64")
    out = tf.function(lambda g: ops.graddrop(g, seed=seed), jit_compile=True)(grads).numpy()
    g = grads.numpy()
    pos, neg = np.where(g > 0, g, 0).sum(0), np.where(g < 0, g, 0).sum(0)
    assert np.all(np.isclose(out, pos, rtol=1e-5) | np.isclose(out, neg, rtol=1e-5))
    for dist in ("dirichlet", "bernoulli", "constrained_bernoulli"):
        w = tf.function(lambda d=dist: ops.rlw_weights(4, seed=seed, distribution=d),
                        jit_compile=True)().numpy()
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6, err_msg=dist)
        assert np.all(w >= 0), dist
    famo = tf.function(ops.famo_logit_gradient, jit_compile=True)
    args = ([0.1, -0.2], [1.0, 2.0], [0.5, 1.9])
    np.testing.assert_allclose(famo(*args).numpy(), ops.famo_logit_gradient(*args).numpy(),
                               rtol=1e-6)


# --- RLW samplings ------------------------------------------------------------------------
def _rlw_draws(distribution, num_tasks, count=2000, present=None):
    fn = tf.function(
        lambda s: ops.rlw_weights(num_tasks, seed=tf.stack([tf.constant(5, "int64"), s]),
                                  present=present, distribution=distribution)
    )
    return np.stack([fn(tf.constant(s, "int64")).numpy() for s in range(count)])


def test_rlw_dirichlet_is_uniform_on_the_simplex():
    import scipy.stats

    w = _rlw_draws("dirichlet", 4)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    assert np.all(w >= 0)
    # the marginal of Dir(1, 1, 1, 1) is Beta(1, 3)
    assert scipy.stats.kstest(w[:, 0], scipy.stats.beta(1, 3).cdf).pvalue > 1e-3
    np.testing.assert_allclose(w.mean(0), 0.25, atol=0.015)


def test_rlw_bernoulli_keeps_each_task_with_probability_one_half_given_one():
    num = 4
    w = _rlw_draws("bernoulli", num)
    kept = w > 0
    assert np.all(kept.sum(1) >= 1)
    for row, k in zip(w, kept.sum(1)):
        np.testing.assert_allclose(row[row > 0], 1.0 / k, rtol=1e-6)
    # P(task kept | at least one kept) = 2^(T-1) / (2^T - 1)
    np.testing.assert_allclose(kept.mean(0), 8 / 15, atol=0.04)
    # the number kept follows Binomial(4, 1/2) without its zero: 4, 6, 4, 1 (/15)
    freq = np.bincount(kept.sum(1), minlength=5)[1:] / len(w)
    np.testing.assert_allclose(freq, np.array([4, 6, 4, 1]) / 15, atol=0.04)


def test_rlw_constrained_bernoulli_picks_one_present_task_uniformly():
    present = tf.constant([1.0, 0.0, 1.0, 1.0])
    w = _rlw_draws("constrained_bernoulli", 4, count=1500, present=present)
    assert np.all(np.sort(w, 1)[:, :-1] == 0) and np.all(w.max(1) == 1.0)
    assert np.all(w[:, 1] == 0.0)
    np.testing.assert_allclose(w.mean(0), [1 / 3, 0, 1 / 3, 1 / 3], atol=0.04)
    w = _rlw_draws("bernoulli", 4, count=300, present=present)
    assert np.all(w[:, 1] == 0.0)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    for dist in ("dirichlet", "bernoulli", "constrained_bernoulli"):
        a = ops.rlw_weights(4, seed=(1, 2), distribution=dist).numpy()
        np.testing.assert_array_equal(a, ops.rlw_weights(4, seed=(1, 2), distribution=dist))
        none = ops.rlw_weights(3, seed=0, present=[0, 0, 0], distribution=dist).numpy()
        np.testing.assert_array_equal(none, 0.0)


# --- FairGrad --------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("case", FULL_RANK + ["duplicate_rows", "nearly_parallel"])
def test_fairgrad_weights_solve_the_alpha_fair_equation(case, alpha):
    grads = CASES[case]
    w = _w(ops.fairgrad_weights, grads, alpha=alpha)
    assert np.all(w > 0)
    # G G^T w = w^(-1/alpha): each task's decrease g_t . d is w_t^(-1/alpha)
    np.testing.assert_allclose(grads @ (w @ grads), w ** (-1 / alpha), rtol=1e-7)


def test_fairgrad_alpha_one_is_nash_mtl_and_fairness_grows_with_alpha():
    grads = CASES["t5"]
    np.testing.assert_allclose(
        _w(ops.fairgrad_weights, grads, alpha=1.0), _w(ops.nash_mtl_weights, grads), rtol=1e-8
    )
    # badly scaled rows at the default alpha: the equation still holds
    grads = CASES["badly_scaled"]
    w = _w(ops.fairgrad_weights, grads)
    lhs = grads @ (w @ grads) + 1e-10 * w * np.linalg.norm(grads, axis=1) ** 2
    np.testing.assert_allclose(lhs, w ** -0.5, rtol=1e-6)
    # a larger alpha narrows the spread of the tasks' loss decreases
    grads = CASES["t5"]
    spread = []
    for alpha in (0.5, 1.0, 2.0, 8.0):
        decrease = grads @ (_w(ops.fairgrad_weights, grads, alpha=alpha) @ grads)
        spread.append(decrease.max() / decrease.min())
    assert spread == sorted(spread, reverse=True), spread
    with pytest.raises(ValueError, match="alpha=0"):
        ops.fairgrad_weights(grads, alpha=0)


# --- GradVac -----------------------------------------------------------------------------
def test_gradvac_with_zero_targets_is_pcgrad():
    for case in ("t5", "t12", "badly_scaled", "opposite"):
        grads = CASES[case]
        orders = ops.pcgrad_task_orders(len(grads), seed=(4, 2))
        w, _ = ops.gradvac_weights(grads, np.zeros((len(grads),) * 2), orders=orders)
        np.testing.assert_allclose(
            w.numpy(), ops.pcgrad_weights(grads, orders=orders).numpy(), rtol=1e-9, atol=1e-12
        )


def test_gradvac_sets_the_similarity_to_its_target():
    g = np.array([[1.0, 0.2, 0.0], [0.3, 1.0, 0.5]])
    cos = g[0] @ g[1] / np.linalg.norm(g[0]) / np.linalg.norm(g[1])
    targets = np.array([[0.0, 0.9], [0.8, 0.0]])
    w, measured = ops.gradvac_weights(g, targets, seed=0)
    w = w.numpy()
    np.testing.assert_allclose(measured.numpy(), [[0, cos], [cos, 0]], rtol=1e-12)
    # sum of adjusted gradients: g_1' = g_1 + a g_2, g_2' = g_2 + b g_1
    a, b = w[1] - 1.0, w[0] - 1.0
    g1, g2 = g[0] + a * g[1], g[1] + b * g[0]
    def cosine(u, v):
        return u @ v / np.linalg.norm(u) / np.linalg.norm(v)

    np.testing.assert_allclose(cosine(g1, g[1]), 0.9, rtol=1e-12)
    np.testing.assert_allclose(cosine(g2, g[0]), 0.8, rtol=1e-12)
    # targets already met: the plain sum
    w, _ = ops.gradvac_weights(g, np.full((2, 2), -1.0), seed=0)
    np.testing.assert_allclose(w.numpy(), [1.0, 1.0])


# --- GradDrop ----------------------------------------------------------------------------
def test_graddrop_keeps_one_sign_per_coordinate_with_its_purity():
    grads = np.array([[1.0, -2.0, 0.5, 3.0], [-3.0, -1.0, 0.5, -1.0], [0.5, 1.0, 1.0, -1.0]])
    purity = 0.5 * (1 + grads.sum(0) / np.abs(grads).sum(0))
    positive = []
    for step in range(400):
        out = ops.graddrop(grads, seed=(1, step)).numpy()
        pos_sum = np.where(grads > 0, grads, 0).sum(0)
        neg_sum = np.where(grads < 0, grads, 0).sum(0)
        # every coordinate is the sum of its positive or of its negative parts
        assert np.all(np.isclose(out, pos_sum) | np.isclose(out, neg_sum)), out
        positive.append(np.isclose(out, pos_sum) & ~np.isclose(pos_sum, neg_sum))
    # the positive parts survive with probability P (coordinate 2: all positive)
    np.testing.assert_allclose(np.mean(positive, 0)[[0, 1, 3]], purity[[0, 1, 3]], atol=0.07)
    assert np.all(np.array(positive)[:, 2])


def test_graddrop_leak_mask_scale_and_determinism():
    grads = CASES["t5"]
    np.testing.assert_allclose(ops.graddrop(grads, seed=0, leak=1.0).numpy(), grads.sum(0),
                               rtol=1e-12)
    same_sign = np.abs(grads)
    np.testing.assert_allclose(ops.graddrop(same_sign, seed=3).numpy(), same_sign.sum(0),
                               rtol=1e-12)
    a = ops.graddrop(grads, seed=(2, 5)).numpy()
    np.testing.assert_array_equal(a, ops.graddrop(grads, seed=(2, 5)).numpy())
    np.testing.assert_allclose(ops.graddrop(1e8 * grads, seed=(2, 5)).numpy(), 1e8 * a, rtol=1e-12)
    mask = np.array([1, 0, 1, 1, 1], bool)
    np.testing.assert_allclose(
        ops.graddrop(grads, seed=(2, 5), mask=mask).numpy(),
        ops.graddrop(grads[mask], seed=(2, 5)).numpy(), rtol=1e-12,
    )
    out, kept = ops.graddrop(CASES["zero_row"], seed=1, return_kept=True)
    assert np.all(np.isfinite(out.numpy())) and kept.numpy()[-1] == 0.0


# --- STCH ----------------------------------------------------------------------------------
def test_stch_is_a_smooth_maximum_with_softmax_gradient():
    losses = tf.Variable([0.5, 2.0, 1.0])
    nadir = tf.constant([1.0, 4.0, 0.5])
    mu = 0.3
    with tf.GradientTape() as tape:
        value = ops.stch_loss(losses, nadir, mu=mu, epsilon=0.0)
    logs = np.log(losses.numpy() / nadir.numpy())
    np.testing.assert_allclose(float(value), 3 * mu * np.log(np.exp(logs / mu).sum()), rtol=1e-6)
    soft = np.exp(logs / mu) / np.exp(logs / mu).sum()
    np.testing.assert_allclose(tape.gradient(value, losses).numpy(), 3 * soft / losses.numpy(),
                               rtol=1e-5)
    # mu -> 0: T times the Tchebycheff maximum of the normalised log losses
    np.testing.assert_allclose(float(ops.stch_loss(losses, nadir, mu=1e-4)), 3 * logs.max(),
                               rtol=1e-4)
    # absent tasks are left out (and T counts the present ones)
    masked = ops.stch_loss(losses, nadir, mu=mu, present=[1, 0, 1], epsilon=0.0)
    sub = ops.stch_loss(tf.gather(losses, [0, 2]), tf.gather(nadir, [0, 2]), mu=mu, epsilon=0.0)
    np.testing.assert_allclose(float(masked), float(sub), rtol=1e-6)


# --- DB-MTL --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_db_mtl_gives_every_task_the_largest_gradient_norm(case):
    """Gradient-magnitude balance: each rescaled gradient has the maximum norm."""
    grads = CASES[case]
    w = _w(ops.db_mtl_weights, grads)
    norms = np.linalg.norm(grads, axis=1)
    nonzero = norms > 0
    np.testing.assert_allclose(w[nonzero] * norms[nonzero], norms.max(), rtol=1e-12)
    assert np.all(w[~nonzero] == 0.0)
    want = sum(norms.max() / n * g for n, g in zip(norms, grads) if n > 0)
    np.testing.assert_allclose(_w(ops.db_mtl, grads), want, rtol=1e-9,
                               atol=1e-12 * norms.max() * len(grads))


def _db_mtl_ema_reference(steps, beta, sigma, eps=1e-8):
    """The authors' recursion: buf = g/(L+eps) + beta/k^sigma (buf - g/(L+eps))."""
    buf = np.zeros_like(steps[0][0])
    for k, (grads, losses) in enumerate(steps, start=1):
        log_grads = grads / (losses + eps)[:, None]
        buf = log_grads + beta / k**sigma * (buf - log_grads)
    return buf


def test_db_mtl_ema_follows_the_log_loss_gradients_and_ignores_loss_scales():
    rng = np.random.default_rng(3)
    steps = [(rng.normal(size=(3, 7)), rng.uniform(0.5, 2.0, size=3)) for _ in range(4)]
    buf = tf.zeros([3, 7], "float64")
    for k, (grads, losses) in enumerate(steps, start=1):
        buf = ops.db_mtl_ema(buf, grads, losses, [k] * 3, beta=0.9, beta_sigma=0.5)
    np.testing.assert_allclose(buf.numpy(), _db_mtl_ema_reference(steps, 0.9, 0.5), rtol=1e-12)
    # Loss-scale balance: L_t -> c_t L_t (so g_t -> c_t g_t) leaves log L_t's
    # gradient, hence the buffer and the direction, unchanged.
    scales = np.array([1e-6, 1.0, 1e6])
    scaled = tf.zeros([3, 7], "float64")
    for k, (grads, losses) in enumerate(steps, start=1):
        scaled = ops.db_mtl_ema(scaled, grads * scales[:, None], losses * scales, [k] * 3,
                                epsilon=0.0)
    plain = _db_mtl_ema_reference(steps, 0.9, 0.0, eps=0.0)
    np.testing.assert_allclose(scaled.numpy(), plain, rtol=1e-9)
    # an excluded task's buffer is kept and its (NaN) row never read
    bad = steps[0][0].copy()
    bad[1] = np.nan
    kept = ops.db_mtl_ema(buf, bad, steps[0][1], [5, 5, 5], mask=[1, 0, 1]).numpy()
    np.testing.assert_array_equal(kept[1], buf.numpy()[1])
    assert np.all(np.isfinite(kept))


# --- MoCo ------------------------------------------------------------------------------------
def _simplex_projection_reference(v):
    """Projection onto the simplex by bisection on the threshold (not by sorting)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
    return np.maximum(v - (lo + hi) / 2, 0)


def test_moco_weight_step_is_the_projected_gradient_step():
    rng = np.random.default_rng(4)
    for trial in range(10):
        y = rng.normal(size=(4, 6)) * rng.choice([0.1, 1.0, 10.0], size=(4, 1))
        lam = rng.dirichlet(np.ones(4))
        gamma, rho = rng.choice([0.01, 0.1, 1.0]), rng.choice([0.0, 0.5])
        want = _simplex_projection_reference(lam - gamma * (y @ y.T + rho * np.eye(4)) @ lam)
        got = ops.moco_weights(y, lam, gamma=gamma, rho=rho).numpy()
        np.testing.assert_allclose(got, want, atol=1e-12)
        v = rng.normal(size=5) * 3
        np.testing.assert_allclose(ops.simplex_projection(v).numpy(),
                                   _simplex_projection_reference(v), atol=1e-12)


def _regularised_min_norm(grads, rho):
    """argmin over the simplex of 1/2 ||G^T l||^2 + rho/2 ||l||^2, by enumerating faces."""
    m = grads @ grads.T + rho * np.eye(len(grads))
    best = None
    for size in range(1, len(grads) + 1):
        for face in itertools.combinations(range(len(grads)), size):
            face = list(face)
            kkt = np.block([[m[np.ix_(face, face)], np.ones((size, 1))],
                            [np.ones((1, size)), np.zeros((1, 1))]])
            sol = np.linalg.lstsq(kkt, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
            if np.all(sol >= -1e-12):
                lam = np.zeros(len(grads))
                lam[face] = sol
                value = lam @ m @ lam
                if best is None or value < best[0]:
                    best = (value, lam)
    return best[1]


def test_moco_weights_converge_to_the_regularised_mgda_weights():
    """With exact gradients (Y fixed) MoCo's weight iteration converges to the
    minimiser of its objective: MGDA's min-norm weights for rho = 0."""
    grads = CASES["t12"][:4] * np.array([[0.8], [1.0], [1.2], [1.4]])  # condition number 2.8
    top = np.linalg.eigvalsh(grads @ grads.T).max()

    @tf.function
    def iterate(y, rho):
        gamma = 1.0 / (top + rho)
        return tf.while_loop(lambda i, lam: i < 80,  # error ~ (1 - 1/2.8)^80
                             lambda i, lam: (i + 1, ops.moco_weights(y, lam, gamma, rho)),
                             (0, tf.fill([4], tf.constant(0.25, "float64"))))[1]

    for rho in (0.0, 10.0):  # 10 moves the solution by ~0.05
        got = iterate(tf.constant(grads), tf.constant(rho, "float64")).numpy()
        np.testing.assert_allclose(got, _regularised_min_norm(grads, rho), atol=1e-6,
                                   err_msg=str(rho))


def test_moco_tracking_removes_the_gradient_noise():
    """The tracked y_t is an average of unbiased noisy gradients with weights
    beta_k -> 0: its error vanishes while a single sample's does not."""
    true = CASES["t5"][:3, :8]

    @tf.function
    def track(y):
        def body(k, y):
            noise = tf.random.stateless_normal([3, 8], seed=tf.stack([k, 7]), dtype="float64")
            counts = tf.fill([3], tf.cast(k, "float64"))
            return k + 1, ops.moco_track(y, true + noise, counts, beta=0.5, beta_sigma=0.5)
        return tf.while_loop(lambda k, y: k <= 2000, body, (1, y))[1]

    y = track(tf.zeros([3, 8], "float64")).numpy()
    # residual variance beta_K / 2 = 0.25 / sqrt(2000): rms error ~0.075, vs 1
    assert np.sqrt(np.mean((y - true) ** 2)) < 0.15
    # one step from zero with beta = 0.5: half the gradient
    np.testing.assert_allclose(ops.moco_track(np.zeros((3, 8)), true, [1, 1, 1]).numpy(),
                               0.5 * true, rtol=1e-12)


# --- ExcessMTL -------------------------------------------------------------------------------
def _excess_mtl_reference(steps, eta, eps):
    """Risks g^T H^-1 g with H = diag(sqrt(sum g^2 + eps)); w *= exp(eta r / r0), sum T."""
    acc, w, initial, out = np.zeros_like(steps[0]), np.ones(len(steps[0])), None, []
    for grads in steps:
        acc = acc + grads**2
        risks = np.sum(grads**2 / np.sqrt(acc + eps), axis=1)
        initial = risks if initial is None else initial
        w = w * np.exp(eta * risks / initial)
        w = w / w.sum() * len(w)
        out.append((risks, acc, w))
    return out


def test_excess_risks_and_weights_follow_the_paper_equations():
    rng = np.random.default_rng(5)
    steps = [rng.normal(size=(3, 6)) * np.array([[0.1], [1.0], [10.0]]) for _ in range(4)]
    eta = 0.3
    sums, weights, first = None, tf.ones(3, "float64"), None
    for grads, (risks, acc, w) in zip(steps, _excess_mtl_reference(steps, eta, 1e-7)):
        got, sums = ops.excess_risks(grads, sums)
        first = got if first is None else first
        weights = ops.excess_mtl_weights(weights, got, first, step_size=eta)
        np.testing.assert_allclose(got.numpy(), risks, rtol=1e-12)
        np.testing.assert_allclose(sums.numpy(), acc, rtol=1e-12)
        np.testing.assert_allclose(weights.numpy(), w, rtol=1e-12)
    # dividing by the first estimate makes the weights blind to the loss scales
    scales = np.array([1e-4, 1.0, 1e4])[:, None]
    sums, weights, first = None, tf.ones(3, "float64"), None
    for grads in steps:
        got, sums = ops.excess_risks(grads * scales, sums, epsilon=0.0)
        first = got if first is None else first
        weights = ops.excess_mtl_weights(weights, got, first, step_size=eta)
    w = _excess_mtl_reference(steps, eta, 0.0)[-1][2]
    np.testing.assert_allclose(weights.numpy(), w, rtol=1e-9)
    # excluded tasks keep their weight; the others share the rest
    out = ops.excess_mtl_weights([1.0, 2.0, 1.0], [1.0, 5.0, 0.0], step_size=1.0,
                                 mask=[1, 0, 1]).numpy()
    np.testing.assert_allclose(out, [2 * np.e / (np.e + 1), 2.0, 2 / (np.e + 1)], rtol=1e-6)
    with pytest.raises(ValueError, match="step_size=-1"):
        ops.excess_mtl_weights([1.0], [1.0], step_size=-1)


@pytest.mark.slow  # each op also compiles under XLA in test_ops_properties.py's edge cases
def test_new_zoo_ops_compile_under_xla_and_match_eager():
    grads = tf.constant(CASES["t5"], "float32")
    mask = tf.constant([1.0, 1.0, 0.0, 1.0, 1.0])
    lam = tf.constant([0.1, 0.2, 0.3, 0.2, 0.2])
    fns = {
        "db_mtl": lambda g, m: ops.db_mtl_weights(g, mask=m),
        "db_mtl_ema": lambda g, m: ops.db_mtl_ema(g * 0.5, g, tf.ones(5), tf.fill([5], 3.0),
                                                  beta_sigma=0.5, mask=m),
        "moco": lambda g, m: ops.moco_weights(g, lam, gamma=0.05, rho=0.1, mask=m),
        "moco_track": lambda g, m: ops.moco_track(g * 0.5, g, tf.fill([5], 2.0), mask=m),
        "excess_mtl": lambda g, m: ops.excess_mtl_weights(
            tf.ones(5), ops.excess_risks(g, g * g, mask=m)[0], tf.fill([5], 0.5), mask=m),
    }
    def all_ops(g, m):
        return {name: fn(g, m) for name, fn in fns.items()}

    compiled = tf.function(all_ops, jit_compile=True)(grads, mask)  # one XLA compile
    for name, fn in fns.items():
        np.testing.assert_allclose(compiled[name].numpy(), fn(grads, mask).numpy(),
                                   rtol=2e-5, atol=1e-7, err_msg=name)
