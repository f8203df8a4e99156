"""Subprocess helper of tests/test_architectures_experts.py (never collected by pytest).

Trains MMoE (IMTL-G at z), PLE (PCGrad, mode='shared') and DSelect-k (equal,
with its `add_loss` regulariser) for a few steps on one device and under
MirroredStrategy on 2 logical CPUs, and prints the largest variable
difference of each as JSON (the last line of stdout).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np

    from keras_mtl import balancers
    from test_architectures_experts import build, data

    x, y = data(64)
    only = sys.argv[1].split(",") if len(sys.argv) > 1 else None
    cases = {"mmoe": lambda: balancers.IMTLG(), "ple": lambda: balancers.PCGrad(mode="shared"),
             "dselect_k": lambda: "equal"}
    result = {}
    # One strategy for every case: collective instances of successive
    # MirroredStrategy objects in one process collide.
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for arch, balancer in cases.items():
        if only and arch not in only:
            continue
        finals = []
        for strategy in (tf.distribute.get_strategy(), mirrored):
            with strategy.scope():
                model = build(arch)
                model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse",
                              balancer=balancer())
            ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
            model.fit(ds, epochs=2, verbose=0)
            finals.append([v.numpy() for v in model.trainable_variables])
        diff = max(float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a)))))
                   for a, b in zip(*finals))
        result[arch] = diff
    print(json.dumps(result))


if __name__ == "__main__":
    main()
