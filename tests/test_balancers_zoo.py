"""Balancers of the method zoo: UPGrad, DualProj, CAGrad, Nash-MTL, Aligned-MTL, FAMO.

The math is tested on the ops (test_ops_zoo.py); here: what the balancers add
(registry, masking of absent tasks, Nash-MTL's clipping, FAMO's logit step).
The shared round-trip, training, XLA, checkpoint and distribution tests pick
them up from the registry.
"""

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
