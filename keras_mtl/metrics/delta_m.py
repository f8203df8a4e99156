"""Delta_m: average per-task relative change against single-task baselines."""

import math


def delta_m(results, baseline, higher_is_better):
    """Average relative performance change of a multi-task model, in percent.

    Delta_m = 100 / T * sum_i (-1)^{l_i} (M_{m,i} - M_{b,i}) / M_{b,i}, with
    l_i = 1 when lower is better for metric i (Eq. 4 of the paper). Negative
    means the multi-task model is worse than the single-task baselines on
    average; the paper's tables print this drop as a positive number (the
    "Delta_m % (lower is better)" column is -delta_m).

    Args:
        results: dict {metric name: value} of the multi-task model.
        baseline: dict {metric name: value} of the single-task baselines
            (non-zero).
        higher_is_better: dict {metric name: bool}.

    Returns:
        A float, percent.

    Example:

    >>> delta_m({"seg": 60.2, "norm": 17.04}, {"seg": 64.93, "norm": 14.90},
    ...         {"seg": True, "norm": False})
    -10.8...

    Reference:
        Maninis, Radosavovic, Kokkinos, "Attentive Single-Tasking of Multiple
        Tasks", CVPR 2019, Eq. 4.
    """
    for arg, value in (("results", results), ("baseline", baseline),
                       ("higher_is_better", higher_is_better)):
        if not isinstance(value, dict) or not value:
            raise ValueError(
                f"Invalid value received for argument `{arg}`. Expected a "
                f"non-empty dict keyed by metric name. Received: {arg}={value!r}"
            )
    names = set(results)
    for arg, value in (("baseline", baseline), ("higher_is_better", higher_is_better)):
        if set(value) != names:
            raise ValueError(
                f"`{arg}` must have the same metric names as `results`. "
                f"Expected: {sorted(names)}. Received: {sorted(value)}"
            )
    total = 0.0
    for name in results:
        base = float(baseline[name])
        if base == 0.0 or not math.isfinite(base):
            raise ValueError(
                "Invalid baseline value: expected a finite non-zero number. "
                f"Received: baseline[{name!r}]={baseline[name]}"
            )
        flag = higher_is_better[name]
        if not isinstance(flag, bool):
            raise ValueError(
                "Invalid value received for `higher_is_better`: expected bools. "
                f"Received: higher_is_better[{name!r}]={flag!r}"
            )
        sign = 1.0 if flag else -1.0
        total += sign * (float(results[name]) - base) / base
    return 100.0 * total / len(results)
