"""The GradNorm toy problem (Chen et al. 2018, section 4).

T regression tasks f_i(x) = sigma_i * tanh((B + eps_i) x) with inputs in
R^250 and outputs in R^100. B and eps_i are constant matrices with IID
N(0, 10) and N(0, 3.5) elements: we read the second argument as the
*variance* (the usual N(mu, sigma^2) notation), so their standard deviations
are sqrt(10) and sqrt(3.5). The paper does not state the input
distribution; we draw x ~ N(0, I / input_dim) so that (B + eps_i) x has unit-
order-of-magnitude entries (std ~ sqrt(13.5) ~ 3.7) and tanh is nonlinear but
not a pure sign function. Everything is drawn from one seeded numpy
generator, so a seed fixes the problem and the data.
"""

import gin
import numpy as np
import tensorflow as tf


def task_names(num_tasks):
    """The toy tasks' names: task_0, task_1, ..."""
    return [f"task_{i}" for i in range(num_tasks)]


def wide_sigmas(num_tasks, seed=0, scale=20.0, floor=1.0):
    """Task scales for the T=10 experiment: |N(0, scale^2)|, floored at `floor`.

    The paper samples the sigma_i "from a wide normal distribution" without
    its parameters; these defaults span roughly 1 to 50, i.e. loss scales
    over three orders of magnitude.
    """
    rng = np.random.default_rng(seed)
    return tuple(float(max(abs(s), floor)) for s in rng.normal(0.0, scale, num_tasks))


class ToyRegression:
    """One instance of the toy problem: B, eps_i and sigma_i fixed by `seed`.

    Args:
        sigmas: the task scales sigma_i (one per task).
        input_dim: 250 in the paper.
        output_dim: 100 in the paper.
        b_variance: variance of B's elements (10 in the paper).
        eps_variance: variance of the eps_i elements (3.5 in the paper).
        seed: seed of B, eps_i and of the data drawn by `sample`.
    """

    def __init__(self, sigmas, input_dim=250, output_dim=100, b_variance=10.0,
                 eps_variance=3.5, seed=0):
        sigmas = [float(s) for s in sigmas]
        if not sigmas:
            raise ValueError(f"`sigmas` must name at least one task. Received: {sigmas}")
        if b_variance < 0 or eps_variance < 0:
            raise ValueError(
                "Variances must be >= 0. Received: "
                f"b_variance={b_variance}, eps_variance={eps_variance}"
            )
        self.sigmas = sigmas
        self.num_tasks = len(sigmas)
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.seed = seed
        self.task_names = task_names(self.num_tasks)
        # Unit-variance pre-activations: var((B + eps_i) x) = 1.
        self.input_std = 1.0 / np.sqrt(input_dim * (b_variance + eps_variance))
        rng = np.random.default_rng(seed)
        self.B = rng.normal(0.0, np.sqrt(b_variance), (output_dim, input_dim))
        self.eps = [
            rng.normal(0.0, np.sqrt(eps_variance), (output_dim, input_dim))
            for _ in sigmas
        ]

    def targets(self, x):
        """{task: f_i(x)} for inputs x of shape (n, input_dim)."""
        return {
            name: (s * np.tanh(x @ (self.B + e).T)).astype("float32")
            for name, s, e in zip(self.task_names, self.sigmas, self.eps)
        }

    def sample(self, n, seed):
        """n inputs x ~ N(0, I/input_dim) and their targets, seeded."""
        rng = np.random.default_rng([self.seed, seed])
        x = rng.normal(0.0, self.input_std, (n, self.input_dim))
        x = x.astype("float32")
        return x, self.targets(x)


@gin.configurable
def toy_datasets(sigmas=(1.0, 100.0), train_size=10_000, test_size=2_000,
                 batch_size=100, seed=0, shuffle=True):
    """Train and held-out test tf.data pipelines of the toy problem.

    Returns:
        (train_ds, test_ds, problem): datasets of `(x, {task_i: y_i})` with x
        float32 (batch, 250) and y_i float32 (batch, 100); the train set is
        shuffled with a seeded, per-epoch reshuffle and repeats.
    """
    problem = ToyRegression(sigmas, seed=seed)
    x_train, y_train = problem.sample(train_size, seed=1)
    x_test, y_test = problem.sample(test_size, seed=2)
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    if shuffle:
        train = train.shuffle(train_size, seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size, drop_remainder=True)
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(batch_size)
    return train, test, problem
