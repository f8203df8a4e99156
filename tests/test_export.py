"""Per-task SavedModel export: reload without keras-mtl, every signature equals predict."""

import json
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import export
from keras_mtl.models.toy import toy_mlp

# Runs in a fresh interpreter (-I: no cwd, no PYTHONPATH, so keras_mtl cannot
# be imported): loads the SavedModel with TensorFlow alone, calls every
# signature and describes each signature's graph.
LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf
export_dir, inputs_path, out_path = sys.argv[1:]
loaded = tf.saved_model.load(export_dir)
x = np.load(inputs_path)
outputs, graphs = {}, {}
for name, fn in loaded.signatures.items():
    for batch in (1, len(x)):
        result = fn(inputs=tf.constant(x[:batch]))
        for task, value in result.items():
            outputs[f"{name}|{task}|{batch}"] = value.numpy()
    graph = fn.graph.as_graph_def()
    nodes = [n.name for n in graph.node]
    nodes += [n.name for f in graph.library.function for n in f.node_def]
    graphs[name] = {"nodes": nodes, "captured": len(fn.captured_inputs),
                    "batch_dim": fn.structured_input_signature[1]["inputs"].shape[0]}
np.savez(out_path + ".npz", **outputs)
json.dump({"graphs": graphs, "keras_mtl_imported": "keras_mtl" in sys.modules},
          open(out_path, "w"))
"""


def _toy(steps=2):
    model = toy_mlp(num_tasks=2, width=16, depth=2, seed=0)
    model.compile(optimizer="adam", loss="mse",
                  balancer=keras_mtl.balancers.GradNorm(alpha=0.12))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16 * steps, 250)).astype("float32")
    y = {t: rng.normal(size=(16 * steps, 100)).astype("float32") for t in model.task_names}
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model, x[:7]


def _masked_se(steps=2):
    layers = keras_mtl.layers
    encoder = layers.TaskSequential([
        keras.layers.Conv2D(8, 3, padding="same"),
        layers.TaskMask(2, sharing_ratio=0.5, seed=1),
        keras.layers.ReLU(),
        layers.TaskSqueezeExcite(2, ratio=4),
        keras.layers.GlobalAveragePooling2D(),
    ])
    heads = {"depth": keras.layers.Dense(3, name="head_depth"),
             "seg": keras.layers.Dense(4, name="head_seg")}
    model = keras_mtl.MultiTaskModel(encoder, heads, name="masked_se")
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8 * steps, 8, 8, 3)).astype("float32")
    y = {"depth": rng.normal(size=(8 * steps, 3)).astype("float32"),
         "seg": rng.normal(size=(8 * steps, 4)).astype("float32")}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model, x[:5]


def _load_elsewhere(export_dir, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(export_dir), str(tmp_path / "x.npy"),
         str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(out.read_text())
    return info, np.load(str(out) + ".npz")


@pytest.mark.parametrize("build", [_toy, _masked_se], ids=["toy_mlp", "mask_and_se"])
def test_signatures_reload_without_keras_mtl_and_equal_predict(build, tmp_path):
    model, x = build()
    export_dir = tmp_path / "export"
    names = export.saved_model(model, str(export_dir))
    tasks = model.task_names
    assert names == ["serve"] + [f"serve_{t}" for t in tasks]
    info, outputs = _load_elsewhere(export_dir, x, tmp_path)
    assert info["keras_mtl_imported"] is False
    graphs = info["graphs"]
    assert set(names) <= set(graphs)
    expected = model.predict(x, verbose=0)
    for batch in (1, len(x)):
        for task in tasks:
            np.testing.assert_allclose(outputs[f"serve|{task}|{batch}"],
                                       expected[task][:batch], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(outputs[f"serve_{task}|{task}|{batch}"],
                                       expected[task][:batch], rtol=1e-5, atol=1e-6)
    head_names = {t: model.heads[t].name for t in tasks}
    for task in tasks:
        graph = graphs[f"serve_{task}"]
        assert graph["batch_dim"] is None  # dynamic batch size
        assert not any(k.startswith(f"serve_{task}|") and not k.startswith(f"serve_{task}|{task}|")
                       for k in outputs.files)  # returns its own task only
        nodes = graph["nodes"]

        def uses(head, nodes=nodes):  # ops are scoped "<model>/<head>[_k]/MatMul"
            return any(re.search(rf"/{head}(_\d+)?/", n) for n in nodes)

        assert uses(head_names[task])
        for other in tasks:
            if other != task:
                assert not uses(head_names[other]), other
        assert all(uses(head_names[t], graphs["serve"]["nodes"]) for t in tasks)
        # Captures exactly the other heads' kernel and bias fewer than `serve`.
        assert graph["captured"] == graphs["serve"]["captured"] - 2 * (len(tasks) - 1)
    # No balancer, optimizer or discriminator state in any signature's graph.
    for graph in graphs.values():
        assert not any("grad_norm" in n or "balancer" in n for n in graph["nodes"])


def test_launcher_exports_a_saved_keras_file(tmp_path):
    from launch import export as export_launcher

    model, x = _toy(steps=1)
    path = tmp_path / "model.keras"
    model.save(path)
    names = export_launcher.export_model(str(path), str(tmp_path / "export"))
    assert names == ["serve", "serve_task_0", "serve_task_1"]
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "export"))
    np.testing.assert_allclose(loaded.serve_task_1(x)["task_1"].numpy(),
                               model.predict(x, verbose=0)["task_1"], rtol=1e-5, atol=1e-6)


def test_export_errors(tmp_path):
    with pytest.raises(ValueError, match="exports a keras_mtl.MultiTaskModel"):
        export.saved_model(keras.Sequential([keras.layers.Dense(1)]), str(tmp_path))
    unbuilt = toy_mlp(num_tasks=2, width=4, depth=1)
    with pytest.raises(ValueError, match="no known input shape"):
        export.saved_model(unbuilt, str(tmp_path / "x"))
