"""Expert-based architectures (issue 14): MMoE, CGC, PLE, DSelect-k.

Tiny MLP experts on a 2-task regression keep the default suite fast; the
full-size gin configs' parameter counts run under `pytest -m slow`.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl import export
from keras_mtl.model import MultiTaskModel
from keras_mtl.models import architectures
from keras_mtl.models import experts as ex

TASKS = {"a": 1, "b": 2}
BUILDERS = {
    "mmoe": lambda **kw: ex.mmoe_multitask(TASKS, expert=ex.mlp_expert((6,)), num_experts=3,
                                          head_hidden=4, input_shape=(5,), **kw),
    "cgc": lambda **kw: ex.cgc_multitask(TASKS, expert=ex.mlp_expert((6,)), num_shared_experts=2,
                                        num_task_experts=1, head_hidden=4, input_shape=(5,), **kw),
    "ple": lambda **kw: ex.ple_multitask(TASKS, expert=ex.mlp_expert((6,)), num_levels=2,
                                        num_shared_experts=1, num_task_experts=1, head_hidden=4,
                                        input_shape=(5,), **kw),
    "dselect_k": lambda **kw: ex.dselect_k_multitask(TASKS, expert=ex.mlp_expert((6,)),
                                                    num_experts=3, num_nonzeros=2, head_hidden=4,
                                                    input_shape=(5,), **kw),
}


@pytest.fixture(autouse=True)
def _no_gin_bindings():
    """Builders are gin-configurable: a config parsed by an earlier test must not leak in."""
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def build(arch, seed=0):
    keras.utils.set_random_seed(seed)
    return BUILDERS[arch]()


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype("float32")
    y = {"a": np.tanh(x[:, :1] + x[:, 1:2]),
         "b": np.concatenate([x[:, 2:3] * x[:, 3:4], np.sin(x[:, 4:5])], 1).astype("float32")}
    return x, y


def task_loss(model, x, y, task, training=True):
    out = model(x, training=training)
    return tf.reduce_mean(tf.square(out[task] - y[task]))


def trainable_count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


# --------------------------------------------------------------------------
# Gradient isolation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_task_specific_parameters_get_exactly_zero_gradient_from_other_tasks(arch):
    model = build(arch)
    x, y = data(16)
    for s in model.task_names:
        for t in model.task_names:
            own = model.task_specific_variables(t)
            assert own
            with tf.GradientTape() as tape:
                loss = task_loss(model, x, y, s)
            grads = tape.gradient(loss, own + model.shared_variables())
            task_grads, shared_grads = grads[: len(own)], grads[len(own):]
            if s != t:
                for v, g in zip(own, task_grads):
                    assert g is None or not np.any(g.numpy()), (arch, s, t, v.path)
            else:
                assert any(g is not None and np.any(g.numpy()) for g in task_grads)
            # every task trains the truly shared parameters
            ids = {id(v) for task in model.task_names for v in model.task_specific_variables(task)}
            shared = [g for v, g in zip(model.shared_variables(), shared_grads) if id(v) not in ids]
            assert shared and all(g is not None and np.any(g.numpy()) for g in shared), (arch, s)


def test_ple_declares_exactly_what_one_task_uses():
    """Below the top level, task experts feed the shared gate: every task trains them."""
    model = build("ple")
    enc = model.encoder
    x, y = data(16)
    with tf.GradientTape() as tape:
        loss = task_loss(model, x, y, "b")
    low = enc.task_experts[0][0][0].trainable_variables  # task a's level-1 expert
    grads = tape.gradient(loss, low)
    assert all(g is not None and np.any(g.numpy()) for g in grads)
    declared = {id(v) for v in enc.task_variables(0)}
    assert not declared & {id(v) for v in low}
    expected = (enc.task_experts[1][0][0].trainable_variables
                + enc.task_gates[1][0].trainable_variables + enc.task_gates[0][0].trainable_variables)
    assert declared == {id(v) for v in expected}
    # GradNorm's "last shared layer" is a shared expert's kernel, never a task's
    kernel = balancers.GradNorm().find_kernel(enc)
    all_task = {id(v) for t in range(2) for v in enc.task_variables(t)}
    assert id(kernel) not in all_task


def test_gradnorm_kernel_of_mmoe_is_a_shared_expert_kernel():
    model = build("mmoe")
    kernel = balancers.GradNorm().find_kernel(model.encoder)
    assert id(kernel) in {id(v) for e in model.encoder.experts for v in e.trainable_variables}


# --------------------------------------------------------------------------
# Equivalences
# --------------------------------------------------------------------------
def test_mmoe_with_one_expert_equals_hard_sharing_with_that_expert():
    keras.utils.set_random_seed(1)
    mmoe = ex.mmoe_multitask(TASKS, expert=ex.mlp_expert((6,)), num_experts=1, head_hidden=4,
                             input_shape=(5,))
    trunk = ex.mlp_expert((6,))
    towers = ex.task_towers(TASKS, head_hidden=4)
    hps = MultiTaskModel(trunk, towers)
    hps(np.zeros((1, 5), "float32"))
    for a, b in zip(trunk.weights, mmoe.encoder.experts[0].weights):
        a.assign(b)
    for t in TASKS:
        for a, b in zip(towers[t].weights, mmoe.heads[t].tower.weights):
            a.assign(b)
    x, y = data(16)
    out_m, out_h = mmoe(x), hps(x)
    for t in TASKS:
        np.testing.assert_allclose(out_m[t].numpy(), out_h[t].numpy(), rtol=1e-6, atol=1e-6)
    for t in TASKS:
        with tf.GradientTape(persistent=True) as tape:
            lm, lh = task_loss(mmoe, x, y, t), task_loss(hps, x, y, t)
        gm = tape.gradient(lm, mmoe.encoder.experts[0].trainable_variables
                           + mmoe.heads[t].tower.trainable_variables)
        gh = tape.gradient(lh, trunk.trainable_variables + towers[t].trainable_variables)
        for a, b in zip(gm, gh):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
        # the gate of a single expert is softmax over one logit: constant 1
        g_gate = tape.gradient(lm, mmoe.heads[t].gate.trainable_variables)
        for g in g_gate:
            assert g is None or np.abs(g.numpy()).max() < 1e-6


def _select_each_expert(gate, scale=5.0):
    """z logits that put selector i on expert i (k = E), equal selector weights."""
    k, m = gate.num_nonzeros, gate.num_binary
    bias = np.zeros((k, m), "float32")
    for i in range(k):
        bias[i] = np.where(gate.codes[i], scale, -scale) * gate.gamma
    gate.z_logits.kernel.assign(np.zeros(gate.z_logits.kernel.shape, "float32"))
    gate.z_logits.bias.assign(bias.ravel())
    gate.w_logits.kernel.assign(np.zeros(gate.w_logits.kernel.shape, "float32"))
    gate.w_logits.bias.assign(np.zeros(k, "float32"))


@pytest.mark.parametrize("num_experts", [4, 3])
def test_dselect_k_with_k_equal_to_experts_and_equal_gates_is_averaging(num_experts):
    keras.utils.set_random_seed(2)
    model = ex.dselect_k_multitask(TASKS, expert=ex.mlp_expert((6,)), num_experts=num_experts,
                                   num_nonzeros=num_experts, head_hidden=4, input_shape=(5,))
    x, _ = data(8)
    for t in TASKS:
        _select_each_expert(model.heads[t].gate)
    z = model.encoder(x)
    weights = model.heads["a"].gate(x, training=False).numpy()
    np.testing.assert_allclose(weights, np.full((8, num_experts), 1.0 / num_experts), atol=1e-7)
    out = model(x)
    for t in TASKS:
        mean = tf.reduce_mean(z["experts"], axis=1)
        np.testing.assert_allclose(out[t].numpy(), model.heads[t].tower(mean).numpy(),
                                   rtol=1e-6, atol=1e-6)


def test_dselect_k_selects_at_most_k_and_adds_its_regulariser_in_training():
    keras.utils.set_random_seed(3)
    gate = ex.DSelectKGate(num_experts=8, num_nonzeros=2, gamma=1.0, entropy_reg=0.1)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    gate.build((None, 4))
    # logits outside [-gamma/2, gamma/2]: binary selectors
    rng = np.random.default_rng(1)
    gate.z_logits.bias.assign(rng.choice([-2.0, 2.0], size=gate.z_logits.bias.shape).astype("float32"))
    gate.w_logits.bias.assign(rng.normal(size=gate.w_logits.bias.shape).astype("float32"))
    w = gate(x, training=False).numpy()
    assert not gate.losses
    assert ((w > 0).sum(1) <= 2).all() and ((w > 0).sum(1) >= 1).all()
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    gate(x, training=True)
    assert len(gate.losses) == 1
    # binary selectors have zero entropy: the regulariser is ~0 (eps-log terms)
    assert float(gate.losses[0]) < 1e-3
    # smooth-step: 0 / cubic / 1, and continuous at +-gamma/2
    s = gate.smooth_step(tf.constant([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0])).numpy()
    np.testing.assert_allclose(s, [0.0, 0.0, 0.5, 0.84375, 1.0, 1.0], atol=1e-6)
    # non-power-of-2: the reachability term sum_i 1/sum_e r_i(e) >= k
    gate3 = ex.DSelectKGate(num_experts=3, num_nonzeros=2, entropy_reg=0.0)
    gate3(x, training=True)
    assert float(gate3.losses[0]) >= 2.0 - 1e-6


# --------------------------------------------------------------------------
# Training, balancers
# --------------------------------------------------------------------------
def _fit(model, balancer, epochs=12):
    x, y = data(64)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", balancer=balancer)
    before = {t: float(task_loss(model, x, y, t, training=False)) for t in TASKS}
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=False)
    after = {t: float(task_loss(model, x, y, t, training=False)) for t in TASKS}
    for t in TASKS:
        assert after[t] < 0.7 * before[t], (t, before, after)
    return model


# One fit per architecture in the default suite (graph mode: one trace,
# then 12 fast steps); the remaining combinations under `-m slow`.
@pytest.mark.parametrize("arch,balancer", [
    ("mmoe", "imtl_g"),      # feature level: dL_t/dz at the shared experts
    ("cgc", "equal"),
    ("ple", "pcgrad_shared"),  # parameter level (mode="shared"), TaskOutputs encoder
    ("dselect_k", "equal"),
    pytest.param("mmoe", "equal", marks=pytest.mark.slow),
    pytest.param("ple", "equal", marks=pytest.mark.slow),
    pytest.param("cgc", "imtl_g", marks=pytest.mark.slow),
    pytest.param("dselect_k", "imtl_g", marks=pytest.mark.slow),
    pytest.param("mmoe", "pcgrad_shared", marks=pytest.mark.slow),
    pytest.param("ple", "gradnorm", marks=pytest.mark.slow),
    pytest.param("mmoe", "gradnorm", marks=pytest.mark.slow),
])
def test_each_architecture_trains_to_a_lower_loss(arch, balancer):
    balancer = {"imtl_g": balancers.IMTLG(),
                "pcgrad_shared": balancers.PCGrad(mode="shared")}.get(balancer, balancer)
    _fit(build(arch), balancer)


def test_feature_level_balancers_see_the_shared_experts_and_are_rejected_for_ple():
    mmoe = build("mmoe")
    mmoe.compile(loss="mse", balancer=balancers.IMTLG())
    ple = build("ple")
    with pytest.raises(ValueError, match="one output per task"):
        ple.compile(loss="mse", balancer=balancers.IMTLG())
    with pytest.raises(ValueError, match="one output per task"):
        ple.compile(loss="mse", balancer="mgda_ub")
    ple.compile(loss="mse", balancer=balancers.IMTLG(mode="shared"))


def test_the_inputs_block_of_dl_dz_is_zero():
    """Gates read x through stop_gradient: only the experts' block of z carries gradient."""
    model = build("cgc")
    x, y = data(8)
    for t in TASKS:
        with tf.GradientTape() as tape:
            z = model.encoder(x)
            tape.watch(z["inputs"])
            loss = tf.reduce_mean(tf.square(model.heads[t](z) - y[t]))
        g_in, g_exp = tape.gradient(loss, [z["inputs"], z["experts"]])
        assert g_in is None or not np.any(g_in.numpy())
        assert np.any(g_exp.numpy())


# --------------------------------------------------------------------------
# Saving, export, determinism, errors, registry
# --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_keras_round_trip_gives_equal_outputs(arch, tmp_path):
    model = build(arch)
    x, _ = data(8)
    path = str(tmp_path / f"{arch}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.encoder) is type(model.encoder)
    a, b = model(x), loaded(x)
    for t in TASKS:
        np.testing.assert_array_equal(a[t].numpy(), b[t].numpy())
    config = model.encoder.get_config()
    again = type(model.encoder).from_config(config)
    assert again.get_config() == config


@pytest.mark.parametrize("arch", ["ple"])
def test_per_task_export_equals_predict(arch, tmp_path):
    model = build(arch)
    x, _ = data(4)
    names = export.saved_model(model, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    ref = model(x)
    for t in TASKS:
        out = loaded.signatures[export.signature_name(t)](inputs=tf.constant(x))
        assert list(out) == [t]
        np.testing.assert_allclose(out[t].numpy(), ref[t].numpy(), rtol=1e-5, atol=1e-6)
    assert names[0] == "serve"


@pytest.mark.parametrize("arch", ["ple"])
def test_seeded_builds_are_identical(arch):
    a, b = build(arch, seed=5), build(arch, seed=5)
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    c = build(arch, seed=6)
    assert any(not np.array_equal(va.numpy(), vc.numpy()) for va, vc in zip(a.weights, c.weights))


def test_parameter_counts_match_the_closed_form():
    F, d, h = 5, 6, 4  # inputs, expert width, tower hidden width
    expert = F * d + d
    towers = sum((d * h + h) + (h * u + u) for u in TASKS.values())
    T = len(TASKS)
    counts = {arch: trainable_count(build(arch).trainable_variables) for arch in BUILDERS}
    # MMoE: E experts, a softmax gate (F -> E) per task
    assert counts["mmoe"] == 3 * expert + T * (F * 3 + 3) + towers
    # CGC: Es shared, Et per task, gate F -> Es + Et per task
    assert counts["cgc"] == (2 + T * 1) * expert + T * (F * 3 + 3) + towers
    # PLE (2 levels, 1 + 1 experts): level 1 on x, level 2 on d-wide inputs;
    # task gates (1 + 1 outputs) at both levels, a shared gate (T + 1) at level 1
    level2 = d * d + d
    assert counts["ple"] == ((1 + T) * expert + T * (F * 2 + 2) + (F * (T + 1) + T + 1)
                             + (1 + T) * level2 + T * (d * 2 + 2) + towers)
    # DSelect-k: k * ceil(log2 E) selector logits and k weight logits per task
    k, m = 2, 2
    assert counts["dselect_k"] == 3 * expert + T * (F * k * m + k * m + F * k + k) + towers


def test_bad_hyperparameters_raise_clear_errors():
    with pytest.raises(ValueError, match="num_experts"):
        ex.SharedExperts(num_experts=0)
    with pytest.raises(ValueError, match="num_nonzeros"):
        ex.DSelectKGate(num_experts=3, num_nonzeros=4)
    with pytest.raises(ValueError, match="num_experts"):
        ex.DSelectKGate(num_experts=1, num_nonzeros=1)
    with pytest.raises(ValueError, match="gamma"):
        ex.DSelectKGate(num_experts=4, num_nonzeros=2, gamma=0.0)
    with pytest.raises(ValueError, match="gate_input"):
        ex.GatedExpertHead(2, gate_input="mean")
    with pytest.raises(ValueError, match="num_levels"):
        ex.ProgressiveLayeredExtraction(2, num_levels=0)
    with pytest.raises(ValueError, match="num_levels=2"):
        ex.ProgressiveLayeredExtraction(2, expert=[ex.mlp_expert()] * 3, num_levels=2)
    with pytest.raises(ValueError, match="num_task_experts"):
        ex.cgc_multitask(TASKS, num_task_experts=0)
    with pytest.raises(ValueError, match="expert"):
        ex.SharedExperts(expert="dense")
    with pytest.raises(ValueError, match="tasks"):
        ex.mmoe_multitask([])
    with pytest.raises(ValueError, match="num_tasks=3"):
        MultiTaskModel(ex.ProgressiveLayeredExtraction(3), ex.task_towers(TASKS))


def test_architecture_registry():
    assert architectures.get_architecture("MMoE") is ex.mmoe_multitask
    assert architectures.get_architecture("DSelect-k") is ex.dselect_k_multitask
    assert architectures.get_architecture("ple") is ex.ple_multitask
    assert {"mmoe", "cgc", "ple", "dselect_k"} <= set(architectures.architecture_names())
    with pytest.raises(ValueError, match="mmoe"):
        architectures.get_architecture("moe")


# --------------------------------------------------------------------------
# Gin configs: --arch, parameter counts in closed form
# --------------------------------------------------------------------------
import copy  # noqa: E402

import gin  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERT_CONFIGS = [f"gin/arch_{d}_{a}.gin" for d in ("nyuv2", "cityscapes")
                  for a in ("mmoe", "cgc", "ple", "dselect_k")] + [
    "gin/arch_celeba_mmoe.gin", "gin/arch_celeba_ple.gin"]
FULL_INPUT = {"nyuv2": (288, 384, 3), "cityscapes": (128, 256, 3), "celeba": (64, 64, 3)}
SMALL_INPUT = {"nyuv2": (32, 32, 3), "cityscapes": (32, 64, 3), "celeba": (32, 32, 3)}


def _parse(path, small, extra=()):
    from keras_mtl import experiment
    import keras_mtl.data  # noqa: F401 (gin registration)
    import keras_mtl.models  # noqa: F401
    import test_gin_paper_configs as paper

    experiment.register_gin_externals()
    gin.clear_config()
    bindings = []
    if small:
        dirs = {k: "/nonexistent" for k in ("nyuv2", "cityscapes", "celeba", "mtfl")}
        bindings = [b.format(**dirs) for b in paper.FAMILIES[paper.family(path)]]
    gin.parse_config_files_and_bindings([os.path.join(ROOT, path)], bindings + list(extra))


def _query(key, default=None):
    try:
        return copy.deepcopy(gin.query_parameter(key))
    except ValueError:
        return default


def _component(template, shape):
    layer = ex._instantiate(ex._serialize(template, "expert"))
    layer.build(shape)
    return trainable_count(layer.trainable_variables), tuple(layer.compute_output_shape(shape))


def closed_form(builder, input_shape):
    """Trainable parameters of the parsed config's model, from its parts' counts."""
    q = lambda name, default=None: _query(f"{builder}.{name}", default)  # noqa: E731
    tasks = q("tasks")
    T = len(tasks)
    x_shape = (None,) + tuple(input_shape)
    F = int(np.prod(input_shape))

    def towers(mixed_shape):
        built = ex.task_towers(tasks, q("head", "dense"), q("head_hidden"), q("head_upsample", 1))
        total = 0
        for tower in built.values():
            tower.build(mixed_shape)
            total += trainable_count(tower.trainable_variables)
        return total

    def gate(f, n):
        return f * n + n

    if builder == "ple_multitask":
        templates = q("expert")
        L, Es, Et = q("num_levels"), q("num_shared_experts"), q("num_task_experts")
        modes = q("gate_input")
        total, shape = 0, x_shape
        for level, (template, mode) in enumerate(zip(templates, modes)):
            p, out = _component(template, shape)
            f = ex.gate_feature_shape(shape, mode)[1]
            total += (Es + T * Et) * p + T * gate(f, Es + Et)
            if level < L - 1:
                total += gate(f, T * Et + Es)
            shape = out
        return total + towers(shape)
    p, out = _component(q("expert"), x_shape)
    if builder == "mmoe_multitask":
        E = q("num_experts")
        return E * p + T * gate(F, E) + towers(out)
    if builder == "cgc_multitask":
        Es, Et = q("num_shared_experts"), q("num_task_experts")
        return (Es + T * Et) * p + T * gate(F, Es + Et) + towers(out)
    E, k = q("num_experts"), q("num_nonzeros")
    m = int(np.ceil(np.log2(E)))
    return E * p + T * (gate(F, k * m) + gate(F, k)) + towers(out)


def _count_config(path, small):
    data = path.split("_")[1]
    shape = (SMALL_INPUT if small else FULL_INPUT)[data]
    _parse(path, small)
    builder = gin.query_parameter("train.model").selector.split(".")[-1]
    expected = closed_form(builder, shape)
    model = _query("train.model")(input_shape=shape)
    actual = trainable_count(model.trainable_variables)
    print(f"{path}: {actual:,} trainable parameters (closed form {expected:,})")
    return actual, expected


@pytest.mark.parametrize("path", [
    "gin/arch_nyuv2_ple.gin",
    pytest.param("gin/arch_cityscapes_dselect_k.gin", marks=pytest.mark.slow),
    pytest.param("gin/arch_celeba_mmoe.gin", marks=pytest.mark.slow),
    pytest.param("gin/arch_nyuv2_mmoe.gin", marks=pytest.mark.slow),
    pytest.param("gin/arch_nyuv2_cgc.gin", marks=pytest.mark.slow),
    pytest.param("gin/arch_celeba_ple.gin", marks=pytest.mark.slow),
])
def test_gin_config_parameter_counts_match_the_closed_form(path):
    actual, expected = _count_config(path, small=True)
    assert actual == expected


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERT_CONFIGS)
def test_full_size_gin_config_parameter_counts(path):
    actual, expected = _count_config(path, small=False)
    assert actual == expected


@pytest.mark.slow
def test_resnet50_expert_has_resnet50_parameters():
    """The dilated ResNet-50 expert is torchvision's ResNet-50 without its classifier."""
    expert = ex.resnet_expert((3, 4, 6, 3), (256, 512, 1024, 2048),
                              bottleneck_filters=(64, 128, 256, 512),
                              stage_strides=(1, 2, 1, 1), stage_dilations=(1, 1, 2, 4))
    expert.build((None, 64, 64, 3))
    assert trainable_count(expert.trainable_variables) == 25_557_032 - 2_049_000


def test_arch_flag_binds_the_registered_builder():
    # The launcher in its own process: absl flags are global, and other
    # launchers imported by the suite define flags of the same names.
    import subprocess
    import sys

    helped = subprocess.run([sys.executable, "-m", "launch.train", "--helpfull"],
                            capture_output=True, text=True, timeout=120)
    assert "--arch" in helped.stdout, helped.stderr[-2000:]
    # Issue 15's flag, checked in the same launcher process.
    assert "--mixed_precision: <float32|float16|bfloat16>" in helped.stdout
    _parse("gin/arch_nyuv2_mmoe.gin", small=True,
           extra=[architectures.gin_binding("DSelect-k")])
    assert gin.query_parameter("train.model").selector.endswith("dselect_k_multitask")
    assert gin.query_parameter("dselect_k_multitask.num_nonzeros") == 2


def test_dselect_k_step_with_an_absent_task_uses_only_this_steps_regulariser():
    """A head skipped in a step (its task absent) must not leave a stale `add_loss`."""
    model = build("dselect_k")
    x, y = data(32)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", balancer="equal",
                  run_eagerly=True)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before = [v.numpy().copy() for v in model.heads["b"].trainable_variables]
    model.fit(x, {"a": y["a"]}, epochs=1, batch_size=32, verbose=0)
    for v, b in zip(model.heads["b"].trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    assert len(model.losses) == 1  # task a's gate only (E = 3: entropy + reachability)


@pytest.mark.slow
def test_mirrored_strategy_equals_one_device():
    """MMoE + IMTL-G (z), PLE + PCGrad(shared), DSelect-k (add_loss) on 2 logical CPUs."""
    import json
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experts_distribute_worker.py")
    proc = subprocess.run([sys.executable, worker], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"mmoe", "ple", "dselect_k"}
    for arch, diff in result.items():
        assert diff < 1e-5, (arch, diff)
