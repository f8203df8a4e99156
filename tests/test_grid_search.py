"""launch/grid_search.py: GradNorm vs a static-weight grid (Chen et al. 2018, 5.3)."""

import json

import numpy as np
import pytest

from launch import grid_search


def test_simplex_grid_points_are_positive_and_sum_to_t():
    grid = grid_search.simplex_grid(2, 10)
    assert len(grid) == 9
    np.testing.assert_allclose([w[0] for w in grid], np.arange(9, 0, -1) * 0.2)
    assert all(abs(sum(w) - 2.0) < 1e-12 and min(w) > 0 for w in grid)
    three = grid_search.simplex_grid(3, 6)
    assert len(three) == 10  # compositions of 6 into 3 positive parts: C(5, 2)
    assert all(abs(sum(w) - 3.0) < 1e-12 and min(w) >= 0.5 for w in three)
    with pytest.raises(ValueError, match="resolution=1"):
        grid_search.simplex_grid(2, 1)


def test_tiny_toy_grid_search_table(tmp_path):
    results = grid_search.grid_search(
        ["toy_t2"], str(tmp_path), resolution=2, steps=4,
        bindings=["toy_data.train_size = 200", "toy_data.test_size = 100",
                  "train.steps_per_epoch = 2"])
    saved = json.loads((tmp_path / "grid_search.json").read_text())
    assert saved["resolution"] == 2 and saved["steps"] == 4
    (res,) = saved["results"]
    assert res == json.loads(json.dumps(results[0]))
    rows = {r["run"]: r for r in res["rows"]}
    assert list(rows) == ["gradnorm", "static_1_1", "gradnorm_static"]
    assert rows["static_1_1"]["weights"] == [1.0, 1.0]

    # GradNorm static retrains with the time average of GradNorm's w_i(t)
    # (step 0 included), the same trace task_weights.csv holds.
    trace = np.loadtxt(tmp_path / "toy_t2" / "gradnorm" / "task_weights.csv",
                       delimiter=",", skiprows=1)
    assert trace.shape == (5, 3)
    mean = trace[:, 1:].mean(axis=0)
    np.testing.assert_allclose(rows["gradnorm"]["weights"], mean, rtol=1e-5)
    np.testing.assert_allclose(rows["gradnorm_static"]["weights"], mean, rtol=1e-5)
    assert abs(sum(mean) - 2.0) < 1e-4 and abs(mean[0] - 1.0) > 1e-4  # w moved
    operative = (tmp_path / "toy_t2" / "gradnorm_static" / "operative_config.gin").read_text()
    assert "StaticWeights.weights = {'task_0': " in operative

    # Scores are each run's final task-normalised test loss; per-task values sum to it.
    for name, row in rows.items():
        metrics = json.loads((tmp_path / "toy_t2" / name / "metrics.json").read_text())
        assert row["score"] == pytest.approx(metrics["task_normalized_loss"])
        assert sum(row["per_task"].values()) == pytest.approx(row["score"], rel=1e-5)
        assert 0.0 < row["score"] < 2.5
    # Lower is better: ranks sort the scores; the summary counts grid points beaten.
    by_rank = sorted(rows.values(), key=lambda r: r["rank"])
    assert [r["rank"] for r in by_rank] == [1, 2, 3]
    assert all(a["score"] <= b["score"] for a, b in zip(by_rank, by_rank[1:]))
    s = res["summary"]
    assert s["best_grid"] == "static_1_1" and s["grid_points"] == 1
    assert s["grid_points_beaten_by_gradnorm"] == int(
        rows["gradnorm"]["score"] < rows["static_1_1"]["score"])
    assert s["distance_mean_weights_to_best_grid"] == pytest.approx(
        np.linalg.norm(mean - 1.0), rel=1e-4)

    md = (tmp_path / "grid_search.md").read_text()
    assert "| 1 | " in md and "**gradnorm**" in md and "static_1_1" in md
    assert f"{rows['static_1_1']['score']:.4g}" in md
    assert (tmp_path / "grid_search.png").stat().st_size > 10_000


def test_unknown_problem_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown problem"):
        grid_search.grid_search(["nyuv2"], str(tmp_path))
