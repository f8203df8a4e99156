"""Balancers of the method zoo: UPGrad, DualProj, CAGrad, Nash-MTL, Aligned-MTL, FAMO,
FairGrad, GradDrop, GradVac, STCH, DB-MTL, MoCo, ExcessMTL.

The math is tested on the ops (test_ops_zoo.py); here: what the balancers add
(registry, masking of absent tasks, Nash-MTL's clipping and reuse of its
weights, FAMO's logit step, the per-parameter state of DB-MTL, MoCo and
ExcessMTL against NumPy versions of their update rules).
The shared round-trip, training, XLA, checkpoint and distribution tests pick
them up from the registry.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl import ops
from keras_mtl.balancers.base import FEATURE_GRADS
from keras_mtl.balancers.base import LOSSES
from keras_mtl.balancers.base import SHARED_GRADS

TASKS = ["a", "b", "c"]
GRADS = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")


def _built(bal, tasks=TASKS):
    bal.build(tasks)
    return bal


def test_registry_names_and_requirements():
    expected = {
        "upgrad": balancers.UPGrad, "dualproj": balancers.DualProj,
        "cagrad": balancers.CAGrad, "nash_mtl": balancers.NashMTL,
        "aligned_mtl": balancers.AlignedMTL, "famo": balancers.FAMO,
    }
    for name, cls in expected.items():
        bal = balancers.get(name)
        assert type(bal) is cls
        assert bal.requires == (LOSSES if name == "famo" else FEATURE_GRADS)
        assert name in balancers.distinct_names()
    assert balancers.CAGrad(mode="shared").requires == SHARED_GRADS
    assert repr(balancers.CAGrad(c=0.2)) == "CAGrad(mode='features', c=0.2, rescale=False)"
    with pytest.raises(ValueError, match="c=-0.1"):
        balancers.CAGrad(c=-0.1)
    with pytest.raises(ValueError, match="max_norm=-1"):
        balancers.NashMTL(max_norm=-1)
    with pytest.raises(ValueError, match="gamma=-1"):
        balancers.FAMO(gamma=-1)


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "cagrad", "nash_mtl", "aligned_mtl"])
def test_gradient_balancers_leave_absent_tasks_out(name):
    bal = _built(balancers.get(name))
    present = tf.constant([1.0, 0.0, 1.0])
    grads = GRADS * present.numpy()[:, None]  # the train step zeroes absent rows
    direction = bal.aggregate(tf.constant(grads), tf.ones(3), present).numpy()
    weights = bal.task_weights().numpy()
    assert weights[1] == 0.0
    np.testing.assert_allclose(direction, weights @ grads, rtol=1e-5, atol=1e-6)
    sub = _built(balancers.get(name), ["a", "c"])
    sub_dir = sub.aggregate(tf.constant(GRADS[[0, 2]]), tf.ones(2), tf.ones(2)).numpy()
    np.testing.assert_allclose(direction, sub_dir, rtol=1e-5, atol=1e-6)
    if name in ("upgrad", "dualproj"):  # conflicts with no present task
        assert np.all(GRADS[[0, 2]] @ direction >= -1e-5)


def test_nash_mtl_clips_the_direction_like_the_authors_code():
    unclipped = _built(balancers.NashMTL(max_norm=0.0))
    d = unclipped.aggregate(tf.constant(GRADS), tf.ones(3), tf.ones(3)).numpy()
    alpha = ops.nash_mtl_weights(GRADS, normalize=True).numpy()
    np.testing.assert_allclose(d, alpha @ GRADS, rtol=1e-5)
    assert np.linalg.norm(d) > 0.5
    clipped = _built(balancers.NashMTL(max_norm=0.5))
    dc = clipped.aggregate(tf.constant(GRADS), tf.ones(3), tf.ones(3)).numpy()
    np.testing.assert_allclose(np.linalg.norm(dc), 0.5, rtol=1e-5)
    np.testing.assert_allclose(dc / np.linalg.norm(dc), d / np.linalg.norm(d), rtol=1e-5)


def test_famo_logit_step_is_the_closed_form():
    lr, gamma = 0.1, 0.01
    famo = _built(balancers.FAMO(gamma=gamma, optimizer=keras.optimizers.SGD(lr)))
    famo.logits.assign([0.2, -0.1, 0.4])
    first = tf.constant([1.0, 2.0, 0.5])
    ones = tf.ones(3)
    famo.update(first, ones)  # no previous losses yet: the logits stay
    np.testing.assert_allclose(famo.logits.numpy(), [0.2, -0.1, 0.4], rtol=1e-7)
    second = tf.constant([0.5, 1.9, 0.45])
    xi = famo.logits.numpy().astype("float64")
    z = np.exp(xi) / np.exp(xi).sum()
    delta = np.log(first.numpy() + 1e-8) - np.log(second.numpy() + 1e-8)
    want = xi - lr * (z * (delta - z @ delta) + gamma * xi)
    # the reported weights are this step's: z_t / (c (L_t + eps)), before the step
    w = z / (second.numpy() + 1e-8)
    famo.update(second, ones)
    np.testing.assert_allclose(famo.logits.numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(famo.task_weights().numpy(), w / w.sum(), rtol=1e-6)
    # the fastest-falling task (a) lost weight relative to the others
    assert famo.logits.numpy()[0] - xi[0] < famo.logits.numpy()[1] - xi[1]


def test_famo_combine_and_absent_tasks():
    famo = _built(balancers.FAMO())  # Adam: momentum must not move an absent logit
    losses = tf.constant([1.0, 2.0, 0.5])
    famo.update(losses, tf.ones(3))
    famo.update(losses * 0.5, tf.ones(3))
    moved = famo.logits.numpy()
    famo.update(losses * 0.25, tf.constant([1.0, 0.0, 1.0]))
    assert famo.logits.numpy()[1] == moved[1]
    assert famo.task_weights().numpy()[1] == 0.0
    present = tf.constant([1.0, 0.0, 1.0])
    w = ops.famo_task_weights(famo.logits, losses, present).numpy()
    np.testing.assert_allclose(
        float(famo.combine(losses, present)), float(w @ losses.numpy()), rtol=1e-6
    )


def test_more_registry_names_and_validation():
    for name, cls, needs in (("fairgrad", balancers.FairGrad, FEATURE_GRADS),
                             ("graddrop", balancers.GradDrop, FEATURE_GRADS),
                             ("gradvac", balancers.GradVac, FEATURE_GRADS),
                             ("stch", balancers.STCH, LOSSES)):
        bal = balancers.get(name)
        assert type(bal) is cls and bal.requires == needs
    for bad, match in ((lambda: balancers.FairGrad(alpha=0), "alpha=0"),
                       (lambda: balancers.GradDrop(leak=2), "leak=2"),
                       (lambda: balancers.GradVac(beta=-0.5), "beta=-0.5"),
                       (lambda: balancers.STCH(nadir_steps=0), "nadir_steps=0"),
                       (lambda: balancers.STCH(mu=0), "mu=0")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_fairgrad_balancer_solves_the_equation_and_clips():
    bal = _built(balancers.FairGrad(alpha=2.0, max_norm=0.0))
    d = bal.aggregate(tf.constant(GRADS, "float64"), tf.ones(3), tf.ones(3)).numpy()
    w = bal.task_weights().numpy()
    np.testing.assert_allclose(GRADS @ d, w ** -0.5, rtol=1e-4)
    clipped = _built(balancers.FairGrad(max_norm=0.1))
    dc = clipped.aggregate(tf.constant(GRADS), tf.ones(3), tf.ones(3)).numpy()
    np.testing.assert_allclose(np.linalg.norm(dc), 0.1, rtol=1e-5)


def test_gradvac_targets_follow_the_measured_similarities():
    beta = 0.25
    bal = _built(balancers.GradVac(beta=beta, seed=0))
    cos = (GRADS @ GRADS.T) / np.outer(*[np.linalg.norm(GRADS, axis=1)] * 2)
    bal.aggregate(tf.constant(GRADS), tf.ones(3), tf.ones(3))
    # every pair is measured once per step; with targets 0, the first
    # measurement of a pair is before any adjustment only for its first visit,
    # so compare the EMA with the measured values the op reports
    _, measured = ops.gradvac_weights(GRADS, np.zeros((3, 3)),
                                      seed=tf.constant([bal.seed, 0], "int64"))
    np.testing.assert_allclose(bal.targets.numpy(), beta * measured.numpy(), rtol=1e-5, atol=1e-7)
    assert int(bal.step.numpy()) == 1
    # the first task each row visits is measured on the raw gradients
    orders = ops.pcgrad_task_orders(3, seed=tf.constant([bal.seed, 0], "int64")).numpy()
    for i in range(3):
        j = [o for o in orders[i] if o != i][0]
        np.testing.assert_allclose(measured.numpy()[i, j], cos[i, j], rtol=1e-5)
    # an absent task's pairs keep their targets
    before = bal.targets.numpy()
    present = tf.constant([1.0, 0.0, 1.0])
    bal.aggregate(tf.constant(GRADS * present.numpy()[:, None]), tf.ones(3), present)
    after = bal.targets.numpy()
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[:, 1], before[:, 1])
    assert after[0, 2] != before[0, 2]


def test_graddrop_balancer_reports_kept_shares_and_advances_its_draws():
    bal = _built(balancers.GradDrop(seed=3))
    d0 = bal.aggregate(tf.constant(GRADS), tf.ones(3), tf.ones(3)).numpy()
    kept = bal.task_weights().numpy()
    assert np.all((kept >= 0) & (kept <= 1)) and kept.max() > 0
    later = [bal.aggregate(tf.constant(GRADS), tf.ones(3), tf.ones(3)).numpy() for _ in range(5)]
    assert int(bal.step.numpy()) == 6
    assert not all(np.allclose(d0, d) for d in later)  # a new draw each step
    np.testing.assert_allclose(d0, ops.graddrop(GRADS, seed=tf.constant([3, 0], "int64")).numpy(),
                               rtol=1e-6)


def test_stch_warmup_nadir_and_smooth_phase():
    stch = _built(balancers.STCH(mu=0.5, warmup_steps=1, nadir_steps=2))
    ones = tf.ones(3)
    first = tf.constant([1.0, 2.0, 4.0])
    np.testing.assert_allclose(float(stch.combine(first, ones)), np.log([1, 2, 4]).sum(),
                               rtol=1e-6)
    stch.update(first, ones)               # warm-up step: not in the nadir
    stch.update(first * 2.0, ones)         # nadir window
    stch.update(first * 4.0, tf.constant([1.0, 0.0, 1.0]))  # task b absent
    np.testing.assert_allclose(stch.nadir.numpy(), [3.0, 4.0, 12.0], rtol=1e-6)
    losses = tf.Variable([1.5, 8.0, 6.0])
    with tf.GradientTape() as tape:
        value = stch.combine(losses, ones)
    np.testing.assert_allclose(
        float(value),
        float(ops.stch_loss(losses, stch.nadir, mu=0.5)), rtol=1e-6)
    grad = tape.gradient(value, losses).numpy()
    np.testing.assert_allclose(stch.loss_weights(losses, ones).numpy(), grad, rtol=1e-5)
    stch.update(tf.convert_to_tensor(losses), ones)
    np.testing.assert_allclose(stch.task_weights().numpy(), grad, rtol=1e-5)


# --- DB-MTL, MoCo, ExcessMTL: per-parameter state, shared mode only ---------------------
TRACKED = {"db_mtl": balancers.DBMTL, "moco": balancers.MoCo, "excess_mtl": balancers.ExcessMTL}
STEPS = [np.random.default_rng(s).normal(size=(3, 8)) * [[0.1], [1.0], [10.0]] for s in (1, 2, 3)]
LOSSES_3 = [np.array([0.5, 2.0, 40.0]), np.array([0.4, 1.9, 35.0]), np.array([0.3, 1.7, 33.0])]


def test_tracked_balancers_registry_modes_and_validation():
    for name, cls in TRACKED.items():
        bal = balancers.get(name)
        assert type(bal) is cls and bal.requires == SHARED_GRADS and bal.mode == "shared"
        assert name in balancers.distinct_names()
        with pytest.raises(ValueError, match="mode='features'.*change\\s+with every batch"):
            cls(mode="features")
    for bad, match in ((lambda: balancers.DBMTL(beta=1.0), "beta=1.0"),
                       (lambda: balancers.DBMTL(beta_sigma=-1), "beta_sigma=-1"),
                       (lambda: balancers.MoCo(beta=0), "beta=0"),
                       (lambda: balancers.MoCo(rho=-0.1), "rho=-0.1"),
                       (lambda: balancers.ExcessMTL(step_size=-1), "step_size=-1"),
                       (lambda: balancers.NashMTL(update_weights_every=0),
                        "update_weights_every=0")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_gradient_state_is_built_once_for_one_size():
    bal = _built(balancers.MoCo())
    assert bal.gradient_dim is None
    bal.build_gradient_state(8)
    bal.build_gradient_state(8)  # idempotent
    assert bal.tracked.shape == (3, 8) and bal.gradient_dim == 8
    with pytest.raises(ValueError, match="built for 8 shared parameters, but the model has 9"):
        bal.build_gradient_state(9)
    with pytest.raises(ValueError, match="gradients of size 5"):
        bal.aggregate(tf.zeros([3, 5]), tf.ones(3), tf.ones(3))
    fresh = _built(balancers.DBMTL())
    with pytest.raises(RuntimeError, match="before the first traced step"):
        tf.function(fresh.aggregate)(tf.constant(GRADS), tf.ones(3), tf.ones(3))
    # the default hook does nothing
    equal = _built(balancers.EqualWeights())
    equal.build_gradient_state(8)
    assert equal.variables == []


def test_tracked_state_round_trips_through_config_and_checkpoint(tmp_path):
    every = functools.partial(balancers.NashMTL, update_weights_every=3)
    for name, cls in {**TRACKED, "nash_mtl_every_3": every}.items():
        bal = _built(cls())
        bal.build_gradient_state(8)
        for step, losses in zip(STEPS, LOSSES_3):
            bal.aggregate(tf.constant(step, "float32"), tf.constant(losses, "float32"), tf.ones(3))
        clone = balancers.get(balancers.serialize(bal))
        assert clone.get_config() == bal.get_config()
        clone.build(TASKS)
        clone.build_gradient_state(8)
        path = tf.train.Checkpoint(b=bal).write(str(tmp_path / name))
        tf.train.Checkpoint(b=clone).read(path).assert_consumed()
        assert len(clone.weights) == len(bal.weights)
        for a, b in zip(bal.weights, clone.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{name} {a.path}")


def test_db_mtl_balancer_matches_the_authors_recursion():
    beta, sigma, eps = 0.8, 0.5, 1e-8
    bal = _built(balancers.DBMTL(beta=beta, beta_sigma=sigma))
    buf = np.zeros((3, 8))
    for k, (grads, losses) in enumerate(zip(STEPS, LOSSES_3), start=1):
        log_grads = grads / (losses + eps)[:, None]
        buf = log_grads + beta / k**sigma * (buf - log_grads)
        norms = np.linalg.norm(buf, axis=1)
        want = (norms.max() / norms) @ buf
        got = bal.aggregate(tf.constant(grads, "float32"), tf.constant(losses, "float32"),
                            tf.ones(3)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(bal.task_weights().numpy(), norms.max() / norms, rtol=1e-5)
    # heads train on log(L + eps): d combine / d L_t = 1 / (L_t + eps)
    losses = tf.Variable([0.5, 2.0, 4.0])
    with tf.GradientTape() as tape:
        value = bal.combine(losses, tf.constant([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(tape.gradient(value, losses).numpy(), [2.0, 0.0, 0.25], rtol=1e-6)
    # an absent task: its average and count stay, it is left out of the direction
    before = bal.gradient_ema.numpy()
    present = tf.constant([1.0, 0.0, 1.0])
    grads = STEPS[0] * present.numpy()[:, None]
    got = bal.aggregate(tf.constant(grads, "float32"), tf.constant(LOSSES_3[0], "float32"),
                        present).numpy()
    np.testing.assert_array_equal(bal.gradient_ema.numpy()[1], before[1])
    assert bal.counts.numpy().tolist() == [4, 3, 4] and bal.task_weights().numpy()[1] == 0.0
    ema = bal.gradient_ema.numpy()[[0, 2]]
    norms = np.linalg.norm(ema, axis=1)
    np.testing.assert_allclose(got, (norms.max() / norms) @ ema, rtol=1e-5)


def _project(v):
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    k = np.max(np.nonzero(u - (css - 1) / np.arange(1, len(v) + 1) > 0)[0]) + 1
    return np.maximum(v - (css[k - 1] - 1) / k, 0)


def test_moco_balancer_matches_the_paper_updates():
    beta, bs, gamma, gs, rho = 0.5, 0.5, 0.1, 0.5, 0.2
    for normalize in (True, False):
        bal = _built(balancers.MoCo(beta=beta, beta_sigma=bs, gamma=gamma, gamma_sigma=gs,
                                    rho=rho, normalize=normalize))
        y, lam = np.zeros((3, 8)), np.full(3, 1 / 3)
        for k, (grads, losses) in enumerate(zip(STEPS, LOSSES_3), start=1):
            g = grads / np.linalg.norm(grads, axis=1, keepdims=True) * losses[:, None] \
                if normalize else grads
            y = y - beta / k**bs * (y - g)
            lam = _project(lam - gamma / k**gs * (y @ y.T + rho * np.eye(3)) @ lam)
            got = bal.aggregate(tf.constant(grads, "float32"), tf.constant(losses, "float32"),
                                tf.ones(3)).numpy()
            np.testing.assert_allclose(bal.tracked.numpy(), y, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(bal.lambdas.numpy(), lam, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(got, lam @ y, rtol=1e-4, atol=1e-5)
    # an absent task keeps its estimate and weight; the others keep their share
    before_y, before_lam = bal.tracked.numpy(), bal.lambdas.numpy()
    present = tf.constant([1.0, 0.0, 1.0])
    bal.aggregate(tf.constant(STEPS[0] * [[1], [0], [1]], "float32"),
                  tf.constant(LOSSES_3[0], "float32"), present)
    np.testing.assert_array_equal(bal.tracked.numpy()[1], before_y[1])
    assert bal.lambdas.numpy()[1] == before_lam[1] and bal.task_weights().numpy()[1] == 0.0
    np.testing.assert_allclose(bal.lambdas.numpy().sum(), 1.0, rtol=1e-6)


def test_excess_mtl_balancer_weights_and_loss_scale_invariance():
    eta = 0.5
    bal = _built(balancers.ExcessMTL(step_size=eta))
    acc, w, initial = np.zeros((3, 8)), np.ones(3), None
    for grads, losses in zip(STEPS, LOSSES_3):
        acc += grads**2
        risks = np.sum(grads**2 / np.sqrt(acc + 1e-7), axis=1)
        initial = risks if initial is None else initial
        heads = bal.combine(tf.constant(losses, "float32"), tf.ones(3)).numpy()
        np.testing.assert_allclose(heads, w @ losses, rtol=1e-5)  # the last update's weights
        w = w * np.exp(eta * risks / initial)
        w = w / w.sum() * 3
        got = bal.aggregate(tf.constant(grads, "float32"), tf.constant(losses, "float32"),
                            tf.ones(3)).numpy()
        np.testing.assert_allclose(bal.task_weights().numpy(), w, rtol=1e-5)
        np.testing.assert_allclose(got, w @ grads, rtol=1e-4, atol=1e-5)
    # The first-estimate normalisation: scaling a task's loss (so its
    # gradients) by 1e-3 or 1e3 leaves the weights as they were.
    scaled = _built(balancers.ExcessMTL(step_size=eta, epsilon=1e-30))
    plain = _built(balancers.ExcessMTL(step_size=eta, epsilon=1e-30))
    for grads, losses in zip(STEPS, LOSSES_3):
        for b, c in ((plain, 1.0), (scaled, np.array([[1e-3], [1.0], [1e3]]))):
            b.aggregate(tf.constant(grads * c, "float32"), tf.constant(losses, "float32"),
                        tf.ones(3))
    np.testing.assert_allclose(scaled.task_weights().numpy(), plain.task_weights().numpy(),
                               rtol=1e-5)
    # an absent task keeps its weight and accumulator
    before = bal.loss_weights.numpy()
    acc_before = bal.grad_sq_sum.numpy()
    present = tf.constant([1.0, 0.0, 1.0])
    bal.aggregate(tf.constant(STEPS[0] * [[1], [0], [1]], "float32"),
                  tf.constant(LOSSES_3[0], "float32"), present)
    assert bal.loss_weights.numpy()[1] == before[1] and bal.task_weights().numpy()[1] == 0.0
    np.testing.assert_array_equal(bal.grad_sq_sum.numpy()[1], acc_before[1])
    np.testing.assert_allclose(bal.loss_weights.numpy().sum(), 3.0, rtol=1e-6)


def test_nash_mtl_update_weights_every_reuses_the_solution():
    every = _built(balancers.NashMTL(update_weights_every=3, max_norm=0.5))
    daily = _built(balancers.NashMTL(max_norm=0.5))
    assert [v.path.split("/")[-1] for v in daily.weights] == ["last_weights"]  # k = 1: no state
    ones = tf.ones(3)
    solved = None
    for k, grads in enumerate(STEPS + STEPS):
        g = tf.constant(grads, "float32")
        got = every.aggregate(g, ones, ones).numpy()
        if k % 3 == 0:
            np.testing.assert_allclose(got, daily.aggregate(g, ones, ones).numpy(), rtol=1e-6)
            solved = ops.nash_mtl_weights(grads, normalize=True).numpy()
            np.testing.assert_allclose(every.solved_weights.numpy(), solved, rtol=1e-5)
        else:  # the stored solution on this step's gradients, clipped to max_norm
            d = solved @ grads
            want = d * min(1.0, 0.5 / np.linalg.norm(d))
            np.testing.assert_allclose(got, want, rtol=1e-5)
    assert int(every.step.numpy()) == 6
    # a task absent at the last solve makes the next step solve again
    present = tf.constant([1.0, 0.0, 1.0])
    # step 6 solves, without task b
    every.aggregate(tf.constant(STEPS[0] * [[1], [0], [1]], "float32"), ones, present)
    assert every.solved_weights.numpy()[1] == 0.0
    g = tf.constant(STEPS[1], "float32")
    np.testing.assert_allclose(every.aggregate(g, ones, ones).numpy(),
                               daily.aggregate(g, ones, ones).numpy(), rtol=1e-6)
    assert every.solved_weights.numpy()[1] > 0.0
    # graph and XLA: test_per_parameter_state_fits_alike_in_graph_and_under_xla (slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nash_mtl_every_3", "db_mtl", "moco", "excess_mtl"])
def test_per_parameter_state_fits_alike_in_graph_and_under_xla(name):
    from keras_mtl.models.toy import toy_mlp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 250)).astype("float32")
    y = {f"task_{t}": rng.normal(size=(64, 100)).astype("float32") * (1 + 4 * t)
         for t in range(2)}
    make = {"nash_mtl_every_3": lambda: balancers.NashMTL(update_weights_every=3,
                                                          mode="shared")}
    states = []
    for jit in (False, True):
        model = toy_mlp(num_tasks=2, width=8, depth=2, seed=0)
        model.compile(optimizer="adam", loss="mse", jit_compile=jit,
                      balancer=make.get(name, lambda: balancers.get(name))())
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        states.append([v.numpy() for v in model.balancer.weights + model.encoder.weights])
    for a, b in zip(*states):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
