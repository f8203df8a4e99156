"""MultiDigits (real scikit-learn digits, MultiMNIST-style) and its LeNet."""

import keras
import numpy as np
import pytest

from keras_mtl.data import digits
from keras_mtl.models.lenet import lenet_multitask


@pytest.fixture(scope="module")
def sources():
    return digits.load_sources()


def test_sources_are_the_bundled_digits(sources):
    images, labels = sources
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_split_is_disjoint_stratified_and_complete(sources):
    _, labels = sources
    train, test = digits.split_sources(labels, test_fraction=0.3, seed=0)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    per_class = np.bincount(labels[test], minlength=10)
    expected = np.round(0.3 * np.bincount(labels)).astype(int)
    assert per_class.tolist() == expected.tolist()
    other_train, _ = digits.split_sources(labels, test_fraction=0.3, seed=1)
    assert not np.array_equal(train, other_train)


def test_no_source_image_in_both_train_and_test_canvases():
    train = digits.multidigits_arrays("train")
    test = digits.multidigits_arrays("test")
    used_train = np.union1d(train["left_source"], train["right_source"])
    used_test = np.union1d(test["left_source"], test["right_source"])
    assert np.intersect1d(used_train, used_test).size == 0
    assert np.isin(used_train, train["sources"]).all()
    assert np.isin(used_test, test["sources"]).all()
    # Default size: 4 canvases per source image; each source is a left digit 4 times.
    assert len(train["images"]) == 4 * len(train["sources"]) == 5032
    assert len(test["images"]) == 4 * len(test["sources"]) == 2156
    assert set(np.bincount(train["left_source"])[train["sources"]]) == {4}


def test_canvases_reconstruct_from_their_sources_and_labels_match(sources):
    images, labels = sources
    data = digits.multidigits_arrays("test", tasks=("left", "right", "sum", "larger"),
                                     num_examples=300, canvas=14, max_shift=2, seed=3)
    assert data["images"].shape == (300, 14, 14, 1)
    for k in range(300):
        top, left, bottom, right = data["shifts"][k]
        a = np.zeros((14, 14), "float32")
        b = np.zeros((14, 14), "float32")
        a[top:top + 8, left:left + 8] = images[data["left_source"][k]]
        b[6 - bottom:14 - bottom, 6 - right:14 - right] = images[data["right_source"][k]]
        np.testing.assert_array_equal(data["images"][k, :, :, 0], np.maximum(a, b))
    y_left = labels[data["left_source"]]
    y_right = labels[data["right_source"]]
    np.testing.assert_array_equal(data["labels"]["left"], y_left)
    np.testing.assert_array_equal(data["labels"]["right"], y_right)
    np.testing.assert_array_equal(data["labels"]["sum"], y_left + y_right)
    np.testing.assert_array_equal(data["labels"]["larger"], (y_left > y_right).astype(int))
    assert data["shifts"].min() == 0 and data["shifts"].max() == 2


def test_pipeline_is_deterministic_by_seed():
    def first(seed, split_seed=0):
        ds = digits.multidigits("train", seed=seed, split_seed=split_seed, batch_size=32)
        x, y = next(iter(ds))
        return x.numpy(), y["left"].numpy(), y["right"].numpy()

    a, b, c = first(0), first(0), first(1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (32, 12, 12, 1) and a[0].dtype == np.float32
    assert not np.array_equal(first(0, split_seed=1)[0], a[0])


def test_test_split_is_ordered_and_epochs_reshuffle_train():
    test = digits.multidigits("test", batch_size=None)
    arrays = digits.multidigits_arrays("test")
    x0 = np.stack([x.numpy() for x, _ in test.take(5)])
    np.testing.assert_array_equal(x0, arrays["images"][:5])
    train = digits.multidigits("train", batch_size=16, repeat=True)
    it = iter(train)
    epoch_batches = int(np.ceil(5032 / 16))
    first = next(it)[0].numpy()
    for _ in range(epoch_batches - 1):
        next(it)
    assert not np.array_equal(first, next(it)[0].numpy())


def test_invalid_arguments_say_what_was_received():
    with pytest.raises(ValueError, match="Received: tasks=\\('left', 'top'\\)"):
        digits.multidigits_arrays(tasks=("left", "top"))
    with pytest.raises(ValueError, match="canvas=7"):
        digits.multidigits_arrays(canvas=7)
    with pytest.raises(ValueError, match="test_fraction=1.0"):
        digits.multidigits_arrays(test_fraction=1.0)
    with pytest.raises(ValueError, match="split='val'"):
        digits.multidigits("val")


def test_lenet_shapes_seed_and_shared_layer():
    model = lenet_multitask(tasks=("left", "right", "sum"), input_shape=(12, 12, 1), seed=0)
    out = model(np.zeros((2, 12, 12, 1), "float32"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "left": (2, 10), "right": (2, 10), "sum": (2, 19)}
    # Last shared layer (GradNorm's W): the dense 180 -> 50 layer.
    assert model.encoder.layers[-1].kernel.shape == (180, 50)
    again = lenet_multitask(tasks=("left", "right", "sum"), input_shape=(12, 12, 1), seed=0)
    other = lenet_multitask(tasks=("left", "right", "sum"), input_shape=(12, 12, 1), seed=1)
    for u, v in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(u, v)
    for a, b in ((model.encoder, other.encoder), (model.heads["sum"], other.heads["sum"])):
        assert not np.array_equal(a.layers[0].kernel.numpy(), b.layers[0].kernel.numpy())


def test_sweep_run_trains_beyond_chance_by_far(tmp_path):
    """The demo's path (records="sweep", steps_per_execution > 1): 250 steps of
    GradNorm beat chance by far, and the run writes only the sweep's records."""
    from launch import digits_demo

    _, metrics = digits_demo.train_one(
        "gradnorm", "gradnorm", 0, str(tmp_path), 250, records="sweep",
        steps_per_execution=10, threads=0)
    for task in ("left", "right"):  # chance is 0.1
        assert metrics[f"{task}_accuracy"] > 0.6, metrics
    run = tmp_path / "gradnorm" / "seed_0"
    assert sorted(p.name for p in run.iterdir()) == [
        "metrics.json", "operative_config.gin", "task_weights.csv"]
    trace = (run / "task_weights.csv").read_text().splitlines()
    assert trace[1] == "0,1,1" and trace[2].startswith("10,") and len(trace) == 27


@pytest.mark.slow
def test_reuse_equals_a_fresh_full_run(tmp_path):
    """A seed run on the re-initialised traced model of another seed (the demo's
    sweep: records="sweep", steps_per_execution > 1) equals a fresh
    `experiment.train` of that seed with full records, weight for weight."""
    import json

    from launch import digits_demo

    steps, options = 250, dict(steps_per_execution=10, threads=0)
    sweep = tmp_path / "sweep"
    results = digits_demo.train_method(
        "uncertainty", "uncertainty", (0, 1), str(sweep), steps, records="sweep",
        reuse=True, **options)
    assert [(seed, reused) for seed, _, _, reused in results] == [(0, False), (1, True)]
    operative = (sweep / "uncertainty" / "seed_1" / "operative_config.gin").read_text()
    assert "lenet_multitask.seed = 1" in operative and "multidigits.seed = 1" in operative

    full = tmp_path / "full"
    _, metrics = digits_demo.train_one(
        "uncertainty", "uncertainty", 1, str(full), steps, records="full", reuse=False,
        **options)
    assert (full / "uncertainty" / "seed_1" / "model.keras").exists()
    assert (full / "uncertainty" / "seed_1" / "tensorboard").is_dir()
    reused = json.loads((sweep / "uncertainty" / "seed_1" / "metrics.json").read_text())
    assert reused == {k: v for k, v in metrics.items() if k != "task_normalized_loss"}
    assert reused["left_accuracy"] != results[0][2]["left_accuracy"]  # another seed
    trace = (sweep / "uncertainty" / "seed_1" / "task_weights.csv").read_text()
    assert trace == (full / "uncertainty" / "seed_1" / "task_weights.csv").read_text()


def test_reuse_refuses_another_balancer_configuration():
    from keras_mtl import balancers
    from keras_mtl import experiment
    from keras_mtl import training
    from launch import digits_demo

    assert digits_demo.reusable("gradnorm") and digits_demo.reusable("equal")
    assert not digits_demo.reusable("rlw")  # its seed is traced into the step
    assert not digits_demo.reusable("static")
    data = digits.multidigits("train", num_examples=8, batch_size=4)

    def compiled(balancer):
        model = lenet_multitask()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), balancer=balancer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    target = training.prepare(compiled(balancers.RLW(seed=0)), data)
    with pytest.raises(ValueError, match="balancer differs.*'seed': 0.*'seed': 1"):
        experiment.reuse_compiled_model(target, compiled(balancers.RLW(seed=1)), data)
    other = compiled(balancers.RLW(seed=0))
    experiment.reuse_compiled_model(target, other, data)
    for a, b in zip(experiment.state_variables(target), experiment.state_variables(other)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_digits_demo_plan_and_gradnorm_static_bindings(tmp_path):
    from keras_mtl import balancers
    from launch import digits_demo

    plan = digits_demo.plan([])
    names = [m for m, _ in plan]
    assert sorted(names) == sorted(balancers.distinct_names())
    assert names[-1] == "static" and plan[-1][1] == "gradnorm_static"
    assert names.index("gradnorm") < names.index("static")
    assert digits_demo.plan(["static"]) == [
        ("equal", "equal"), ("gradnorm", "gradnorm"), ("static", "gradnorm_static")]
    with pytest.raises(ValueError, match="Unknown balancer"):
        digits_demo.plan(["nope"])

    run = tmp_path / "gradnorm" / "seed_2"
    run.mkdir(parents=True)
    (run / "task_weights.csv").write_text("step,left,right\n0,1,1\n1,0.5,1.5\n2,0.9,1.1\n")
    bindings = digits_demo.balancer_bindings("static", 2, str(tmp_path))
    assert bindings[0] == "train.balancer = @keras_mtl.balancers.StaticWeights()"
    assert bindings[1].startswith("keras_mtl.balancers.StaticWeights.weights = {'left': 0.7999")
    weights = digits_demo.mean_weights_csv(str(run / "task_weights.csv"))
    assert weights == pytest.approx({"left": 0.8, "right": 1.2})
    assert "keras_mtl.balancers.RLW.seed = 2" in digits_demo.balancer_bindings("rlw", 2, "")
    assert digits_demo.skip_reason("gradnorm") is None


def _reusable_methods():
    from launch import digits_demo

    return [m for m, _ in digits_demo.plan([]) if digits_demo.reusable(m)]


@pytest.mark.slow
@pytest.mark.parametrize("method", _reusable_methods())
def test_every_reusable_balancer_reruns_a_seed_exactly(method, tmp_path):
    """The demo reuses a balancer's traced model across seeds: for every balancer it
    does, the re-initialised run equals a freshly built one (weights trace and metrics)."""
    from launch import digits_demo

    options = dict(records="sweep", steps_per_execution=8, threads=0)
    reused = digits_demo.train_method(method, method, (0, 1), str(tmp_path / "a"), 48,
                                      reuse=True, **options)
    assert reused[1][3], "seed 1 did not reuse the traced model"
    _, fresh = digits_demo.train_one(method, method, 1, str(tmp_path / "b"), 48,
                                     reuse=False, **options)
    assert reused[1][2] == fresh
    assert ((tmp_path / "a" / method / "seed_1" / "task_weights.csv").read_text()
            == (tmp_path / "b" / method / "seed_1" / "task_weights.csv").read_text())
