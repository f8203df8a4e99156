"""The arithmetic floor of exact per-task gradients, beside keras-mtl's steps.

Some balancers need arithmetic that equal weights does not, whatever the
implementation:

- GradNorm: the T gradients of the task losses at the last shared kernel W
  (one (in, B) x (B, out) product per task, for their norms);
- a feature-level gradient balancer (IMTL-G, MGDA on dL_t/dz): the Gramian
  of the (T, B x |z|) matrix of the tasks' gradients at z;
- a parameter-level one (`mode="shared"`): the (T, P) Jacobian of the shared
  parameters, i.e. T backward passes through the trunk where equal weights
  takes one, then its Gramian and the weighted sum of its rows.

This suite states that floor for the GradNorm toy network (batch 100 of
250-d inputs, 4 x Dense(100) trunk, one Dense(100) head per task) two ways:

- `macs`: multiply-adds of one train step, counted from the layer shapes
  (`toy_macs`; element-wise work is left out), as a ratio to equal weights';
- `raw TF`: the same steps written in minimal TensorFlow (`RawSteps`: plain
  `tf.GradientTape` over the toy model's own variables, SGD; no checks, no
  state beyond GradNorm's weights, no Keras train step), timed, as a ratio
  to the minimal equal-weights step. They compute the real methods (GradNorm
  with alpha = 0, IMTL-G from the Gramian): tests/test_benchmarks.py
  checks their numbers against keras-mtl's and their MatMul multiply-adds
  against `toy_macs`.

and times keras-mtl's own steps (GradNorm, IMTL-G on features and on the
shared parameters) as a ratio to its equal weights, all in interleaved
rounds in one process. A ratio target under the `macs` or `raw TF` ratio is
under what the arithmetic allows on that machine.

Run: `python -m launch.benchmark --suites=floor --rounds=5` (or
`python -m launch.bench.floor [--quick]`).
"""

import sys

import numpy as np

METHODS = ("gradnorm", "imtl_g features", "imtl_g shared")


def toy_macs(num_tasks, batch=100, input_dim=250, width=100, depth=4, output_dim=100):
    """Multiply-adds of one train step of the toy network, per method.

    Counts the matrix products only (forward, the backward products of
    every kernel and of every needed input gradient, Gramians, weighted
    sums); element-wise work (activations, biases, losses) is left out.

    Returns:
        dict with `"equal"` and one entry per `METHODS` name.
    """
    dims = [input_dim] + [width] * depth
    kernels = [dims[i] * dims[i + 1] for i in range(depth)]
    params = sum(kernels) + width * depth  # kernels and biases: P
    trunk_forward = batch * sum(kernels)
    # Backward: every kernel's gradient, and the input gradient of every
    # layer but the first (x needs none).
    trunk_backward = batch * sum(kernels) + batch * sum(kernels[1:])
    head = batch * width * output_dim
    # Heads: forward, kernel gradient and dL_t/dz, one head per task.
    equal = trunk_forward + 3 * num_tasks * head + trunk_backward
    return {
        "equal": equal,
        # T gradients at the last shared kernel.
        "gradnorm": equal + num_tasks * batch * kernels[-1],
        # The Gramian of the (T, B x width) matrix of dL_t/dz and the
        # weighted sum of its rows.
        "imtl_g features": equal + (num_tasks**2 + num_tasks) * batch * width,
        # T - 1 more trunk backward passes, the (T, P) Gramian and the
        # weighted sum of the T rows.
        "imtl_g shared": equal + (num_tasks - 1) * trunk_backward
        + num_tasks**2 * params + num_tasks * params,
    }


def _imtl_g_from_gramian(gram):
    """IMTL-G weights (Liu et al. 2021, eq. 11) from the Gramian G G^T.

    alpha_{2:T} = g_1 U^T (D U^T)^{-1} with D_t = g_1 - g_t and
    U_t = u_1 - u_t (u = unit rows), every product read off the Gramian.
    """
    import tensorflow as tf

    norms = tf.sqrt(tf.linalg.diag_part(gram))
    # p[s, t] = g_s . u_t
    p = gram / norms[None, :]
    u_diff = p[:, :1] - p[:, 1:]  # g_s . (u_1 - u_t), (T, T-1)
    d_u = u_diff[:1] - u_diff[1:]  # (g_1 - g_s) . (u_1 - u_t), (T-1, T-1)
    alpha = tf.linalg.solve(tf.transpose(d_u), tf.transpose(u_diff[:1]))[:, 0]
    return tf.concat([1.0 - tf.reduce_sum(alpha, keepdims=True), alpha], 0)


class RawSteps:
    """Minimal TensorFlow train steps of the toy model, one per method.

    Plain `tf.GradientTape` over the model's own variables and SGD: the
    arithmetic of each method and nothing else. `step(name)` returns a
    `tf.function(x, ys)` running `steps` train steps on the batch.
    """

    def __init__(self, model, learning_rate=1e-4):
        import tensorflow as tf

        self.trunk = [(layer.kernel, layer.bias) for layer in model.encoder.layers]
        self.heads = [(model.heads[t].kernel, model.heads[t].bias) for t in model.task_names]
        self.trunk_vars = [v for pair in self.trunk for v in pair]
        self.num_tasks = len(self.heads)
        self.learning_rate = learning_rate
        self.weights = tf.Variable(tf.ones([self.num_tasks]), trainable=False)

    def _forward(self, x, ys):
        import tensorflow as tf

        z = x
        for kernel, bias in self.trunk:
            z = tf.nn.relu(tf.matmul(z, kernel) + bias)
        losses = [tf.reduce_mean(tf.square(tf.matmul(z, k) + b - y))
                  for (k, b), y in zip(self.heads, ys)]
        return z, losses

    def _apply(self, variables, grads):
        for v, g in zip(variables, grads):
            v.assign_sub(self.learning_rate * g)

    def _head_passes(self, tape, z, losses, scales=None):
        """Each head's gradients and dL_t/dz (scaled by `scales[t]`)."""
        dzs = []
        for t, ((kernel, bias), loss) in enumerate(zip(self.heads, losses)):
            d_kernel, d_bias, dz = tape.gradient(loss, [kernel, bias, z])
            if scales is not None:
                d_kernel, d_bias = scales[t] * d_kernel, scales[t] * d_bias
            self._apply([kernel, bias], [d_kernel, d_bias])
            dzs.append(dz)
        return dzs

    def equal(self, x, ys):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            _, losses = self._forward(x, ys)
            total = tf.add_n(losses)
        heads = [v for pair in self.heads for v in pair]
        variables = self.trunk_vars + heads
        self._apply(variables, tape.gradient(total, variables))
        return total

    def gradnorm(self, x, ys):
        """GradNorm (alpha = 0): norms at the last shared kernel, one SGD step on w."""
        import tensorflow as tf

        w = tf.convert_to_tensor(self.weights)
        with tf.GradientTape(persistent=True) as tape:
            z, losses = self._forward(x, ys)
        dzs = self._head_passes(tape, z, losses, scales=tf.unstack(w))
        kernel = self.trunk[-1][0]
        norms = tf.stack([tf.norm(tape.gradient(z, kernel, output_gradients=dz))
                          for dz in dzs])
        direction = tf.add_n([w[t] * dz for t, dz in enumerate(dzs)])
        self._apply(self.trunk_vars, tape.gradient(z, self.trunk_vars,
                                                   output_gradients=direction))
        g = w * norms
        new = w - 0.025 * tf.sign(g - tf.reduce_mean(g)) * norms
        self.weights.assign(new * (self.num_tasks / tf.reduce_sum(new)))
        return norms

    def imtl_g_features(self, x, ys):
        import tensorflow as tf

        with tf.GradientTape(persistent=True) as tape:
            z, losses = self._forward(x, ys)
        dzs = self._head_passes(tape, z, losses)
        matrix = tf.stack([tf.reshape(dz, [-1]) for dz in dzs])
        weights = _imtl_g_from_gramian(tf.matmul(matrix, matrix, transpose_b=True))
        direction = tf.reshape(tf.linalg.matvec(matrix, weights, transpose_a=True),
                               tf.shape(z))
        self._apply(self.trunk_vars, tape.gradient(z, self.trunk_vars,
                                                   output_gradients=direction))
        return weights

    def imtl_g_shared(self, x, ys):
        import tensorflow as tf

        with tf.GradientTape(persistent=True) as tape:
            z, losses = self._forward(x, ys)
        dzs = self._head_passes(tape, z, losses)
        matrix = tf.stack([
            tf.concat([tf.reshape(g, [-1]) for g in
                       tape.gradient(z, self.trunk_vars, output_gradients=dz)], 0)
            for dz in dzs])
        weights = _imtl_g_from_gramian(tf.matmul(matrix, matrix, transpose_b=True))
        direction = tf.linalg.matvec(matrix, weights, transpose_a=True)
        grads, start = [], 0
        for v in self.trunk_vars:
            n = int(np.prod(v.shape))
            grads.append(tf.reshape(direction[start:start + n], v.shape))
            start += n
        self._apply(self.trunk_vars, grads)
        return weights

    def step(self, name, steps=1):
        """`tf.function(x, ys)` of `steps` train steps of method `name`."""
        import tensorflow as tf

        one = {"equal": self.equal, "gradnorm": self.gradnorm,
               "imtl_g features": self.imtl_g_features,
               "imtl_g shared": self.imtl_g_shared}[name]

        @tf.function
        def run(x, ys):
            out = None
            for _ in range(steps):
                out = one(x, ys)
            return out

        return run


def _keras_step(name, num_tasks, steps_per_execution):
    from keras_mtl import balancers as b
    from launch.bench import balancers as bench

    factory = {"equal": b.EqualWeights, "gradnorm": b.GradNorm,
               "imtl_g features": lambda: b.IMTLG(mode="features"),
               "imtl_g shared": lambda: b.IMTLG(mode="shared")}[name]
    return bench._train_function(factory, num_tasks, False, "toy", steps_per_execution)


def measure(task_counts=(2, 10, 40), steps=30, rounds=5, steps_per_execution=10,
            clock="wall"):
    """{("raw" | "keras-mtl", method): {T: [seconds per step, one per round]}}."""
    import keras
    import tensorflow as tf

    from keras_mtl.models.toy import toy_mlp
    from launch.bench import balancers as bench

    calls = max(1, steps // steps_per_execution)
    results = {}
    for num_tasks in task_counts:
        x, y = next(iter(bench._dataset(num_tasks, "toy")))
        ys = list(y.values())
        timed = {}
        for name in ("equal",) + METHODS:
            keras.utils.set_random_seed(0)
            model = toy_mlp(num_tasks)
            model(x)
            raw = RawSteps(model).step(name, steps_per_execution)
            raw(x, ys)  # trace and run once
            # The train function's interface (`bench._time`): logs with a scalar loss.
            raw_step = (lambda _, raw=raw, x=x, ys=ys:
                        {"loss": tf.reduce_sum(raw(x, ys))})
            timed[("raw TF", name)] = (raw_step, None)
            timed[("keras-mtl", name)] = _keras_step(name, num_tasks, steps_per_execution)
        for step, iterator in timed.values():  # an untimed round
            bench._time(step, iterator, 1, steps_per_execution)
        for _ in range(rounds):
            for key, (step, iterator) in timed.items():
                results.setdefault(key, {}).setdefault(num_tasks, []).append(
                    bench._time(step, iterator, calls, steps_per_execution, clock))
    return results


def table(results, task_counts):
    """Markdown: per method and T, the MAC ratio and the two timed ratios."""
    from launch.bench.balancers import _cell

    head = ("| method | " + " | ".join(
        f"T={t} MACs | T={t} raw TF | T={t} keras-mtl" for t in task_counts) + " |")
    lines = [head, "|" + "---|" * (1 + 3 * len(task_counts))]
    cells = []
    for t in task_counts:
        macs = toy_macs(t)
        cells.append(f"{macs['equal'] / 1e6:.1f} M")
        for impl in ("raw TF", "keras-mtl"):
            cells.append(f"{1000 * np.median(results[(impl, 'equal')][t]):.2f} ms")
    lines.append("| equal (MACs; ms/step) | " + " | ".join(cells) + " |")
    for name in METHODS:
        cells = []
        for t in task_counts:
            macs = toy_macs(t)
            cells.append(f"{macs[name] / macs['equal']:.2f}x")
            for impl in ("raw TF", "keras-mtl"):
                base = results[(impl, "equal")][t]
                cells.append(_cell([a / b for a, b in zip(results[(impl, name)][t], base)]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_with_data(quick=False, rounds=None, task_counts=None, steps=None,
                  steps_per_execution=10, clock="wall"):
    """(markdown, JSON-able dict) of the floor suite."""
    import tensorflow as tf

    task_counts = task_counts or ((2, 10) if quick else (2, 10, 40))
    steps = steps or (10 if quick else 30)
    rounds = rounds or (2 if quick else 5)
    steps_per_execution = min(steps_per_execution, steps)
    results = measure(task_counts, steps=steps, rounds=rounds,
                      steps_per_execution=steps_per_execution, clock=clock)
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    text = (
        "Toy MLP (batch 100, 250-d inputs, 4 x Dense(100) trunk, Dense(100) heads): "
        "multiply-adds relative to equal weights (`toy_macs`), then the median step "
        "time relative to equal weights over "
        f"{rounds} interleaved rounds of {steps} steps (min-max over rounds) of the "
        "minimal TensorFlow steps (`RawSteps`) and of keras-mtl's, "
        f"{device}, steps_per_execution={steps_per_execution}, {clock} clock.\n\n"
        + table(results, task_counts))
    data = {
        "device": device, "task_counts": list(task_counts), "steps": steps,
        "rounds": rounds, "steps_per_execution": steps_per_execution, "clock": clock,
        "macs": {t: toy_macs(t) for t in task_counts},
        "rows": [{"implementation": impl, "method": name, "T": t, "seconds": seconds}
                 for (impl, name), times in results.items()
                 for t, seconds in times.items()],
    }
    return text, data


def run(quick=False, rounds=None):
    return run_with_data(quick=quick, rounds=rounds)[0]


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
