"""MTAN, Cross-stitch and learning to branch (issue 14): sharing, equivalences, training.

Tiny ResNet backbones (two stages of one basic block, 16x16 inputs) keep the
default suite fast; the full-size gin configs are counted under `-m slow`.
"""

import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl import callbacks as mtl_callbacks
from keras_mtl import export
from keras_mtl.models import CrossStitch
from keras_mtl.models import LearnToBranch
from keras_mtl.models import MTANBackbone
from keras_mtl.models import ResNet
from keras_mtl.models import cross_stitch_multitask
from keras_mtl.models import ltb_multitask
from keras_mtl.models import mtan_multitask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = {"seg": 2, "depth": 1}
SMALL = dict(stage_blocks=(1, 1), stage_filters=(4, 8), bottleneck_filters=None,
             stage_strides=(1, 2), stage_dilations=(1, 1), stem_filters=4,
             head_filters=4, head_upsample=8, input_shape=(16, 16, 3))
BACKBONE = {k: SMALL[k] for k in ("stage_blocks", "stage_filters", "bottleneck_filters",
                                  "stage_strides", "stage_dilations", "stem_filters")}
BUILDERS = {"mtan": mtan_multitask, "cross_stitch": cross_stitch_multitask, "ltb": ltb_multitask}


def _model(arch, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    extra = {"seed": 3} if arch == "ltb" else {}
    return BUILDERS[arch](dict(TASKS), **{**SMALL, **extra, **kwargs})


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 16, 16, 3)).astype("float32")
    return x, {"seg": (x[..., 0] > x[..., 1]).astype("int32"),
               "depth": x.mean(axis=-1, keepdims=True)}


LOSSES = {"seg": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
          "depth": keras.losses.MeanSquaredError()}


def _task_loss(model, x, y, task, training=True):
    out = model(x, training=training)
    return LOSSES[task](y[task], out[task])


# --- sharing ------------------------------------------------------------------


@pytest.mark.parametrize("arch,kwargs", [
    ("mtan", {}), ("cross_stitch", {}), ("cross_stitch", {"stitch_after": (0,)}), ("ltb", {}),
])
def test_task_specific_parameters_get_zero_gradient_from_other_tasks(arch, kwargs):
    model = _model(arch, **kwargs)
    x, y = _data(4)
    count = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert count == closed_form(arch, {**SMALL, **kwargs}, TASKS)
    own = {t: model.task_specific_variables(t) for t in TASKS}
    if arch == "cross_stitch" and kwargs:
        # the column's second stage follows the last unit: it is task-specific
        assert {v.path for v in model.encoder.columns[1].blocks[1].trainable_weights} <= {
            v.path for v in own["depth"]}
    for task in TASKS:
        with tf.GradientTape(persistent=True) as tape:
            loss = _task_loss(model, x, y, task)
        for other in TASKS:
            grads = tape.gradient(loss, own[other])
            norms = [0.0 if g is None else float(tf.norm(g)) for g in grads]
            if other == task:
                assert sum(norms) > 0, (arch, task)
            else:
                assert norms == [0.0] * len(norms), (arch, task, other)
        del tape


def test_cross_stitch_at_identity_equals_independent_networks():
    keras.utils.set_random_seed(0)
    cs = CrossStitch(2, backbone=BACKBONE, alpha_same=1.0, alpha_diff=0.0)
    x, _ = _data(3)
    cs(x)
    nets = []
    for column in cs.columns:
        net = ResNet(pooling=None, **BACKBONE)
        net(x)
        for a, b in zip(net.weights, column.weights):
            a.assign(b)
        nets.append(net)
    rng = np.random.default_rng(1)
    for t in range(2):
        w = tf.constant(rng.normal(size=(3, 2, 2, 8)).astype("float32"))
        with tf.GradientTape(persistent=True) as tape:
            z = cs(x, training=True)[t]
            ref = nets[t](x, training=True)
            loss, ref_loss = tf.reduce_sum(w * z), tf.reduce_sum(w * ref)
        np.testing.assert_array_equal(z.numpy(), ref.numpy())
        g = tape.gradient(loss, cs.columns[t].trainable_weights)
        g_ref = tape.gradient(ref_loss, nets[t].trainable_weights)
        for a, b in zip(g, g_ref):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
        other = tape.gradient(loss, cs.columns[1 - t].trainable_weights)
        assert all(g is None or float(tf.reduce_max(tf.abs(g))) == 0.0 for g in other)


def test_cross_stitch_units_start_at_the_papers_values():
    keras.utils.set_random_seed(0)
    cs = CrossStitch(3, backbone=BACKBONE, stitch_after=(1,), alpha_same=0.8)
    cs(_data(1)[0])
    rows = np.stack([r.numpy() for r in cs.units[0]])
    np.testing.assert_allclose(rows, [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], rtol=1e-6)
    two = CrossStitch(2, backbone=BACKBONE)
    assert (two.alpha_same, two.alpha_diff) == (0.9, pytest.approx(0.1))


def test_mtan_with_masks_forced_to_one_passes_the_backbone_features_through():
    model = _model("mtan")
    x, _ = _data(3)
    head = model.heads["seg"]
    for mask in head.masks:
        bn = mask.layers[-2]
        bn.gamma.assign(tf.zeros_like(bn.gamma))
        bn.beta.assign(tf.fill(bn.beta.shape, 100.0))  # sigmoid(100) == 1.0 in float32
    z = model.encoder(x, training=False)
    m = head.masks[-1](tf.concat([head.input_pools[-1](z[-2]), tf.zeros_like(z[-1])], -1),
                       training=False)
    assert float(tf.reduce_min(m)) == 1.0
    np.testing.assert_array_equal(head(z, training=False).numpy(),
                                  head.decoder(z[-1], training=False).numpy())
    # z is the backbone: the last pair is (all blocks but the last, the output)
    trunk = ResNet(pooling=None, **BACKBONE)
    trunk(x)
    for a, b in zip(trunk.weights, model.encoder.weights):
        a.assign(b)
    np.testing.assert_array_equal(z[-1].numpy(), trunk(x, training=False).numpy())


def test_ltb_with_one_branch_per_layer_is_hard_sharing():
    keras.utils.set_random_seed(0)
    ltb = LearnToBranch(2, backbone=BACKBONE, branches=(1, 1), seed=5)
    x, _ = _data(3)
    ltb(x)
    trunk = ResNet(pooling=None, **BACKBONE)
    trunk(x)
    pairs = [(trunk.stem, ltb.stem)] + list(zip(trunk.blocks, [n[0][0] for n in ltb.nodes]))
    for a, b in pairs:
        for va, vb in zip(a.weights, b.weights):
            va.assign(vb)
    w = tf.constant(np.random.default_rng(0).normal(size=(3, 2, 2, 8)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        zs = ltb(x, training=True)
        ref = trunk(x, training=True)
        loss, ref_loss = tf.reduce_sum(w * zs[1]), tf.reduce_sum(w * ref)
    for z in zs:
        np.testing.assert_array_equal(z.numpy(), ref.numpy())
    shared = [v for a, b in pairs for v in b.trainable_weights]
    g = tape.gradient(loss, shared)
    g_ref = tape.gradient(ref_loss, [v for a, b in pairs for v in a.trainable_weights])
    for a, b in zip(g, g_ref):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_ltb_samples_are_seeded_and_inference_is_the_argmax_tree():
    x, _ = _data(2)
    outs = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        ltb = LearnToBranch(2, backbone=BACKBONE, seed=7)
        ltb(x)
        ltb.branch_logits[1].assign([[0.0, 3.0], [2.0, 0.0]])
        ltb.task_logits[0].assign([1.0, 0.0])
        ltb.task_logits[1].assign([0.0, 1.0])
        outs.append([z.numpy() for z in ltb(x, training=True)])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    assert ltb.chosen_tree() == {"stages": [None, [1, 0]], "tasks": [0, 1]}
    w = ltb.branch_weights(ltb.branch_logits[1], training=False).numpy()
    np.testing.assert_array_equal(w, [[0.0, 1.0], [1.0, 0.0]])
    # training samples are one-hot (straight-through) and vary with the noise
    samples = np.stack([ltb.branch_weights(tf.zeros((4, 3)), training=True).numpy()
                        for _ in range(20)])
    assert set(np.unique(samples)) == {0.0, 1.0} and (samples.sum(-1) == 1).all()
    assert len({tuple(s.argmax(-1)) for s in samples}) > 1


# --- balancers ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cross_stitch", "ltb"])
def test_feature_level_balancers_are_rejected_where_tasks_split_inside(arch):
    model = _model(arch)
    with pytest.raises(ValueError, match="one output per task"):
        model.compile(loss=LOSSES, balancer=balancers.IMTLG())
    model.compile(loss=LOSSES, balancer=balancers.IMTLG(mode="shared"))


def test_gradnorm_kernel_is_on_every_tasks_path_or_rejected():
    mtan = _model("mtan")
    mtan.compile(loss=LOSSES, balancer="gradnorm")
    last = mtan.encoder.blocks[-1]
    assert mtan.balancer.find_kernel(mtan.encoder).path in {
        c.conv.kernel.path for c in last.convs + [last.shortcut] if c is not None}
    ltb = _model("ltb")
    ltb.compile(loss=LOSSES, balancer="gradnorm")
    assert ltb.balancer.find_kernel(ltb.encoder) is ltb.encoder.stem.conv.kernel
    cs = _model("cross_stitch")
    cs.compile(loss=LOSSES, balancer="gradnorm")
    with pytest.raises(ValueError, match="cross-stitch columns are per task"):
        cs.balancer.find_kernel(cs.encoder)


def test_mtan_update_is_the_gradient_of_the_summed_losses():
    """z is a list of leaves: the engine's equal-weight step is plain SGD on L_seg + L_depth."""
    model = _model("mtan")
    x, y = _data(8)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES, balancer="equal",
                  run_eagerly=True)
    before = [v.numpy().copy() for v in model.trainable_weights]
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        total = sum(LOSSES[t](y[t], out[t]) for t in TASKS)
    grads = tape.gradient(total, model.trainable_weights)
    model.train_on_batch(tf.constant(x), {t: tf.constant(v) for t, v in y.items()})
    for v, b, g in zip(model.trainable_weights, before, grads):
        np.testing.assert_allclose(v.numpy(), b - 0.1 * g.numpy(), rtol=1e-4, atol=1e-6)


FIT_CASES = [
    ("mtan", "equal"), ("mtan", "pcgrad_shared"), ("mtan", "imtl_g"),
    ("cross_stitch", "equal"), ("cross_stitch", "pcgrad_shared"),
    ("ltb", "equal"), ("ltb", "pcgrad_shared"),
]


def _balancer(name):
    if name == "pcgrad_shared":
        return balancers.PCGrad(mode="shared")
    if name == "imtl_g":
        return balancers.IMTLG()
    return name


@pytest.mark.slow
@pytest.mark.parametrize("arch,balancer", [("mtan", "imtl_g"), ("ltb", "pcgrad_shared")])
def test_full_batch_steps_lower_the_loss(arch, balancer):
    """Three full-batch eager steps (the quickest check when debugging)."""
    model = _model(arch)
    x, y = _data(16)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=LOSSES,
                  balancer=_balancer(balancer), run_eagerly=True)
    callbacks = [mtl_callbacks.BranchTemperature()] if arch == "ltb" else []
    losses = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
                       callbacks=callbacks).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], (arch, balancer, losses)


@pytest.mark.slow
@pytest.mark.parametrize("arch,balancer", FIT_CASES)
def test_trains_to_a_lower_loss(arch, balancer):
    model = _model(arch)
    x, y = _data(32)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=LOSSES,
                  balancer=_balancer(balancer))
    callbacks = [mtl_callbacks.BranchTemperature()] if arch == "ltb" else []
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False,
                        callbacks=callbacks)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], (arch, balancer, losses)


def test_branch_temperature_follows_the_optimizer_step():
    model = _model("ltb", temperature=2.0, decay_rate=0.5, decay_steps=2, min_temperature=0.6)
    model.compile(optimizer="sgd", loss=LOSSES)
    callback = mtl_callbacks.BranchTemperature()
    callback.set_model(model)
    callback.on_train_begin()
    model.optimizer.iterations.assign(3)  # e.g. restored from a checkpoint
    callback.on_train_batch_begin(0)
    assert float(model.encoder.temperature.numpy()) == pytest.approx(2 * 0.5 ** 1.5)
    assert model.encoder.temperature_at(100) == 0.6
    inv = LearnToBranch(2, backbone=BACKBONE, temperature=10.0, schedule="inverse_sqrt",
                        decay_steps=5, min_temperature=0.1)
    assert inv.temperature_at(15) == pytest.approx(10.0 / 2.0)  # LibMTL: epoch 3 of 5 steps
    plain = _model("mtan")  # no temperature: left alone (one config, any --arch)
    callback.set_model(plain)
    callback.on_train_begin()
    assert callback.layers == []


# --- saving and export ------------------------------------------------------------


@pytest.mark.parametrize("arch", [
    pytest.param("mtan", marks=pytest.mark.slow),
    pytest.param("cross_stitch", marks=pytest.mark.slow),
    "ltb",  # default suite: stateful (temperature, noise seed), TaskOutputs
])
def test_keras_round_trip_gives_equal_outputs(arch, tmp_path):
    model = _model(arch)
    x, _ = _data(2)
    if arch == "ltb":
        model.encoder.task_logits[1].assign([0.0, 1.0])
        model.encoder.anneal_temperature(2000)
    path = str(tmp_path / f"{arch}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.encoder) is type(model.encoder)
    assert loaded.encoder.get_config() == model.encoder.get_config()
    if arch == "ltb":  # the annealed temperature is state, saved with the model
        assert float(loaded.encoder.temperature.numpy()) == pytest.approx(0.25)
    out, back = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for t in TASKS:
        np.testing.assert_allclose(out[t], back[t], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mtan", "cross_stitch", "ltb"])
def test_per_task_export(arch, tmp_path):
    model = _model(arch)
    x, _ = _data(2)
    names = export.saved_model(model, str(tmp_path / arch))
    loaded = tf.saved_model.load(str(tmp_path / arch))
    out = model(x, training=False)
    for task in TASKS:
        got = loaded.signatures[export.signature_name(task)](inputs=tf.constant(x))
        assert list(got) == [task]
        np.testing.assert_allclose(got[task].numpy(), out[task].numpy(), rtol=1e-5, atol=1e-5)
    assert names[0] == "serve"


# --- hyper-parameters --------------------------------------------------------------


@pytest.mark.parametrize("make,match", [
    (lambda: CrossStitch(2, backbone=BACKBONE, stitch_after=(2,)), "stitch_after"),
    (lambda: CrossStitch(2, backbone=BACKBONE, stitch_after=(0, 0)), "stitch_after"),
    (lambda: CrossStitch(2, backbone=BACKBONE, alpha_same=float("nan")), "alpha_same"),
    (lambda: CrossStitch(0, backbone=BACKBONE), "num_tasks"),
    (lambda: CrossStitch(2, backbone={"depth": 50}), "Unknown keys"),
    (lambda: LearnToBranch(2, backbone=BACKBONE, branches=(2,)), "branches"),
    (lambda: LearnToBranch(2, backbone=BACKBONE, branches=(2, 0)), "branches"),
    (lambda: LearnToBranch(2, backbone=BACKBONE, temperature=0.0), "temperature"),
    (lambda: LearnToBranch(2, backbone=BACKBONE, temperature=0.5, min_temperature=1.0), "anneal"),
    (lambda: LearnToBranch(2, backbone=BACKBONE, decay_rate=1.5), "anneal"),
    (lambda: LearnToBranch(2, backbone=BACKBONE, schedule="cosine"), "schedule"),
    (lambda: MTANBackbone(pooling="avg"), "pooling"),
    (lambda: _model("mtan", reduction=0), "reduction"),
    (lambda: mtan_multitask({}), "tasks"),
])
def test_bad_hyper_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- gin configs and their parameter counts ------------------------------------


def _conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def _conv_bn(k, cin, cout):
    return _conv(k, cin, cout) + 2 * cout


def _block(cin, f, b, stride):
    if b is None:
        n = _conv_bn(3, cin, f) + _conv_bn(3, f, f)
    else:
        n = _conv_bn(1, cin, b) + _conv_bn(3, b, b) + _conv_bn(1, b, f)
    return n + (_conv_bn(1, cin, f) if cin != f or stride != 1 else 0)


def _stage(s, cin, cfg):
    b = None if cfg["bottleneck_filters"] is None else cfg["bottleneck_filters"][s]
    n = 0
    for k in range(cfg["stage_blocks"][s]):
        n += _block(cin, cfg["stage_filters"][s], b, cfg["stage_strides"][s] if k == 0 else 1)
        cin = cfg["stage_filters"][s]
    return n


def _resnet(cfg):
    n, cin = _conv_bn(7, 3, cfg["stem_filters"]), cfg["stem_filters"]
    for s in range(len(cfg["stage_blocks"])):
        n += _stage(s, cin, cfg)
        cin = cfg["stage_filters"][s]
    return n


def _heads(cfg, tasks, cin):
    h = cfg["head_filters"]
    return sum(_conv(3, cin, h, True) + _conv(1, h, out, True) for out in tasks.values())


def closed_form(arch, cfg, tasks):
    """Trainable parameters of a `<arch>_multitask(tasks, **cfg)` model, by hand."""
    T, widths = len(tasks), list(cfg["stage_filters"])
    if arch == "cross_stitch":
        units = len(cfg.get("stitch_after") or widths)
        return T * _resnet(cfg) + units * T * T + _heads(cfg, tasks, widths[-1])
    if arch == "ltb":
        branches = list(cfg.get("branches") or [T] * len(widths))
        n, cin = _conv_bn(7, 3, cfg["stem_filters"]), cfg["stem_filters"]
        for s, count in enumerate(branches):
            n += count * _stage(s, cin, cfg)
            cin = widths[s]
        n += sum(a * b for a, b in zip(branches[1:], branches[:-1])) + T * branches[-1]
        return n + _heads(cfg, tasks, widths[-1])
    # MTAN: backbone + per task (attention modules, transfer blocks, decoder)
    r, per_task = cfg.get("reduction", 4), 0
    inputs = [cfg["stem_filters"]] + widths[:-1]
    for s, width in enumerate(widths):
        cb = width if cfg["stage_blocks"][s] > 1 else inputs[s]
        cin = cb if s == 0 else cb + width
        mid = width // r
        per_task += _conv(1, cin, mid, True) + 2 * mid + _conv(1, mid, width, True) + 2 * width
        if s + 1 < len(widths):
            nxt = widths[s + 1]
            per_task += _block(width, nxt, None if cfg["bottleneck_filters"] is None
                               else max(nxt // 4, 1), 1)
    return _resnet(cfg) + T * per_task + _heads(cfg, tasks, widths[-1])


ARCH_CONFIGS = sorted(
    f"gin/arch_{data}_{arch}.gin" for data in ("nyuv2", "cityscapes")
    for arch in ("mtan", "cross_stitch", "ltb"))
# default suite: MTAN's count (the one with a non-trivial formula); the small
# cross-stitch and LTB models are counted in the sharing test
SHRUNK_CASES = [p if p == "gin/arch_nyuv2_mtan.gin" else pytest.param(p, marks=pytest.mark.slow)
                for p in ARCH_CONFIGS]
SHRINK = {
    "stage_blocks": (1, 2, 1, 1), "stage_filters": (8, 8, 16, 16),
    "bottleneck_filters": (2, 2, 4, 4), "stem_filters": 4, "head_filters": 4,
}


def _parse(path, extra=()):
    from keras_mtl import experiment
    import keras_mtl.models  # noqa: F401

    experiment.register_gin_externals()
    gin.clear_config()
    gin.parse_config_files_and_bindings([os.path.join(ROOT, path)], list(extra))
    return gin.query_parameter("train.model").configurable.name


def _count(path, extra=()):
    import copy

    factory = _parse(path, extra)
    arch = factory.replace("_multitask", "")
    fn = {"mtan_multitask": mtan_multitask, "cross_stitch_multitask": cross_stitch_multitask,
          "ltb_multitask": ltb_multitask}[factory]
    model = copy.deepcopy(gin.query_parameter("train.model"))()
    model(tf.zeros((1, 16, 16, 3)))
    def query(key):  # macros (`%TASKS`) resolve on deepcopy
        return copy.deepcopy(gin.query_parameter(key))

    cfg = {name: query(f"{factory}.{name}") for name in (
        "stage_blocks", "stage_filters", "bottleneck_filters", "stage_strides", "stem_filters")}
    import inspect
    defaults = {k: v.default for k, v in inspect.signature(fn).parameters.items()}
    for key in ("head_filters", "reduction", "branches", "stitch_after"):
        try:
            cfg[key] = query(f"{factory}.{key}")
        except ValueError:
            cfg[key] = defaults.get(key)
    tasks = query(f"{factory}.tasks")
    gin.clear_config()
    n = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return arch, n, closed_form(arch, cfg, tasks)


@pytest.mark.parametrize("path", SHRUNK_CASES)
def test_arch_config_parameter_count_matches_the_closed_form_when_shrunk(path):
    factory = _parse(path)
    extra = [f"{factory}.{k} = {v!r}" for k, v in SHRINK.items()]
    arch, counted, expected = _count(path, extra)
    print(f"{path} (shrunk): {counted:,} trainable parameters")
    assert counted == expected


@pytest.mark.slow
@pytest.mark.parametrize("path", ARCH_CONFIGS)
def test_arch_config_parameter_count_full_size(path):
    arch, counted, expected = _count(path)
    print(f"{path}: {counted:,} trainable parameters")
    assert counted == expected


def test_registry_names_and_arch_switch_in_one_config():
    import copy

    from keras_mtl.models import architectures

    assert architectures.get_architecture("MTAN") is mtan_multitask
    assert architectures.get_architecture("Cross-stitch") is cross_stitch_multitask
    assert architectures.get_architecture("ltb") is ltb_multitask
    # `--arch=ltb` on the MTAN config: the base configures every builder
    _parse("gin/arch_nyuv2_mtan.gin", [architectures.gin_binding("ltb")] + [
        f"ltb_multitask.{k} = {v!r}" for k, v in SHRINK.items()])
    model = copy.deepcopy(gin.query_parameter("train.model"))()
    callbacks = copy.deepcopy(gin.query_parameter("train.callbacks"))
    gin.clear_config()
    assert isinstance(model.encoder, LearnToBranch)
    assert model.task_names == ["seg", "normal", "depth"]
    assert model.encoder.schedule == "inverse_sqrt" and model.encoder.decay_steps == 100
    assert isinstance(callbacks[0], mtl_callbacks.BranchTemperature)
