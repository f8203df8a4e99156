"""The GradNorm toy network (Chen et al. 2018, section 4)."""

import gin
import keras

from keras_mtl.data.toy import task_names


@gin.configurable
def toy_mlp(num_tasks=2, width=100, depth=4, output_dim=100, seed=0):
    """Four fully-connected ReLU layers of 100 units, one affine head per task.

    Args:
        num_tasks: T; tasks are named task_0 ... task_{T-1}.
        width: units of each trunk layer (100 in the paper).
        depth: number of trunk layers (4 in the paper).
        output_dim: output size of each head (100 in the paper).
        seed: seed of the initialisers, so a seed fixes the initial weights.

    Returns:
        An uncompiled `keras_mtl.MultiTaskModel`.
    """
    from keras_mtl.model import MultiTaskModel

    def init(i):
        return keras.initializers.GlorotUniform(seed=seed * 1000 + i)

    trunk = keras.Sequential(
        [
            keras.layers.Dense(width, activation="relu", kernel_initializer=init(i),
                               name=f"shared_{i}")
            for i in range(depth)
        ],
        name="trunk",
    )
    heads = {
        name: keras.layers.Dense(output_dim, kernel_initializer=init(100 + t), name=f"head_{name}")
        for t, name in enumerate(task_names(num_tasks))
    }
    return MultiTaskModel(encoder=trunk, heads=heads, name="toy_mlp")
