"""Delta_m reproduces the ablation rows of Maninis et al. (CVPR 2019), Table 3."""

import pytest

from keras_mtl.metrics import delta_m

HIGHER = {"edge": True, "seg": True, "parts": True, "norm": False, "sal": True}


def row(*printed):
    """A table row as printed (strings keep the number of printed decimals)."""
    return dict(zip(HIGHER, printed))


def value(row):
    return {k: float(v) for k, v in row.items()}


R26 = row("71.3", "64.93", "57.12", "14.90", "64.17")
R50 = row("72.7", "68.30", "60.70", "14.61", "65.40")
R101 = row("73.5", "69.76", "63.48", "14.15", "67.41")


@pytest.mark.parametrize("baseline,results,table", [
    (R26, row("69.2", "60.20", "54.10", "17.04", "62.10"), 6.62),   # 3b: multi-task baseline
    (R26, row("70.5", "62.80", "56.41", "15.27", "64.84"), 1.42),   # 3b: residual adapters
    (R26, row("71.1", "64.00", "56.84", "15.05", "64.35"), 0.59),   # 3b: SE
    (R26, row("69.7", "62.20", "55.04", "16.17", "62.19"), 4.34),   # 3d: adversarial only
    (R26, row("71.0", "64.61", "57.25", "15.00", "64.70"), 0.11),   # 3d: SE + adversarial
    (R50, row("69.2", "63.20", "55.10", "16.04", "63.60"), 6.81),   # 3e: R-50 baseline
    (R50, row("72.4", "68.00", "61.12", "14.68", "65.71"), 0.04),   # 3e: R-50 SEA
    (R101, row("70.5", "66.45", "61.54", "15.44", "66.39"), 4.50),  # 3e: R-101 baseline
    (R101, row("73.5", "68.51", "63.41", "14.37", "67.72"), 0.60),  # 3e: R-101 SEA
])
def test_table_3_rows(baseline, results, table):
    # The table prints the drop (lower is better): table = -Delta_m, to 2 decimals.
    # The per-task numbers are printed rounded (1 or 2 decimals); the bound
    # below is the largest effect that rounding can have on Delta_m.
    def half_ulp(printed):
        return 0.5 * 10.0 ** -len(printed.split(".")[1])

    m, b = value(results), value(baseline)
    bound = 100.0 / len(m) * sum(
        (half_ulp(results[k]) + half_ulp(baseline[k]) * m[k] / b[k]) / b[k] for k in m)
    assert bound < 0.06
    assert -delta_m(m, b, HIGHER) == pytest.approx(table, abs=bound + 0.005)


def test_closed_form_and_sign_convention():
    # +10% on a higher-is-better metric, error 20% lower on a lower-is-better one.
    value = delta_m({"acc": 0.55, "err": 0.8}, {"acc": 0.5, "err": 1.0},
                    {"acc": True, "err": False})
    assert value == pytest.approx((10.0 + 20.0) / 2)
    assert delta_m({"a": 3.0}, {"a": 3.0}, {"a": True}) == 0.0


def test_errors_name_what_was_received():
    with pytest.raises(ValueError, match="same metric names"):
        delta_m({"a": 1.0}, {"b": 1.0}, {"a": True})
    with pytest.raises(ValueError, match=r"baseline\['a'\]=0"):
        delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})
    with pytest.raises(ValueError, match="higher_is_better"):
        delta_m({"a": 1.0}, {"a": 2.0}, {"a": 1})
    with pytest.raises(ValueError, match="non-empty dict"):
        delta_m({}, {}, {})


def test_table_3b_reproduced_to_printed_precision():
    # Table 3b: MTL baseline 6.62, RA 1.42, SE 0.59, within table rounding.
    for printed, table in [(("69.2", "60.20", "54.10", "17.04", "62.10"), 6.62),
                           (("70.5", "62.80", "56.41", "15.27", "64.84"), 1.42),
                           (("71.1", "64.00", "56.84", "15.05", "64.35"), 0.59)]:
        got = -delta_m(value(row(*printed)), value(R26), HIGHER)
        assert got == pytest.approx(table, abs=0.005)
