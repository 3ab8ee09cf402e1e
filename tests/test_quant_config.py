"""Tier assignment: presets, mixed split by priority, byte budgets, overrides, errors."""

from __future__ import annotations

import numpy as np
import pytest

from shark_export.fields import Table
from shark_export.format import Tier, row_stride
from shark_export.quant_config import QuantConfig, QuantConfigError, assign_tiers

TABLES = {"a.weight": Table("a.weight", ("a",), 1000, 64), "b.weight": Table("b.weight", ("b",), 500, 16)}


def _priorities(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.zipf(1.5, t.num_rows).astype(np.float64) * (rng.random(t.num_rows) < 0.8) for name, t in TABLES.items()}


def _grouped(dim: int) -> bool:
    """The default scale_group ("auto") keeps groups only where no row loses its own bound: a budget is planned
    with a header per row (format v2), so it is never overspent when the groups are not kept."""
    return False


def _bytes(tiers: np.ndarray, dim: int) -> int:
    return sum(row_stride(Tier(t), dim, 3 if _grouped(dim) else 2) for t in tiers)


def _metadata(tables) -> int:
    """Block index, default row and (v3) the 12-byte record per group of 256 rows, as FORMAT.md counts them."""
    return sum(-(-t.num_rows // 64) * 32 + t.dim * 4 + (12 * -(-t.num_rows // 256) if _grouped(t.dim) else 0)
               for t in tables.values())


def test_single_presets_are_uniform():
    for preset, tier in [("fp32", Tier.FP32), ("fp16", Tier.FP16), ("int8", Tier.INT8), ("int4", Tier.INT4)]:
        assert assign_tiers(QuantConfig(preset), TABLES, None) == {"a.weight": tier, "b.weight": tier}


def test_mixed_splits_rows_by_priority():
    priorities = _priorities()
    assigned = assign_tiers(QuantConfig("mixed", mixed_fractions=(0.1, 0.3)), TABLES, priorities)
    tiers = np.concatenate([assigned["a.weight"], assigned["b.weight"]])  # ranked over both tables at once
    counts = np.bincount(tiers, minlength=6)
    assert (counts[Tier.FP16], counts[Tier.INT8], counts[Tier.INT4]) == (150, 450, 900)
    p = np.concatenate([priorities["a.weight"], priorities["b.weight"]])
    assert p[tiers == Tier.FP16].min() >= p[tiers == Tier.INT8].max()
    assert p[tiers == Tier.INT8].min() >= p[tiers == Tier.INT4].max()
    hot = {"a.weight": np.full(1000, 1.0), "b.weight": np.full(500, 50.0)}  # every row of b is read more
    assigned = assign_tiers(QuantConfig("mixed", mixed_fractions=(0.1, 0.3)), TABLES, hot)
    assert np.all(assigned["b.weight"][:150] == Tier.FP16) and np.all(assigned["a.weight"] != Tier.FP16)
    assert assign_tiers(QuantConfig("mixed"), TABLES, None)["a.weight"] == Tier.INT8  # no calibration data


@pytest.mark.parametrize("ratio", [0.15, 0.2, 0.3, 0.6])
def test_budget_is_met_and_spent_on_the_highest_priorities(ratio):
    priorities = _priorities(1)
    tiers = assign_tiers(QuantConfig(target_ratio=ratio), TABLES, priorities)
    fp32 = sum(t.num_rows * t.dim * 4 for t in TABLES.values())
    metadata = _metadata(TABLES)
    spent = sum(_bytes(tiers[n], TABLES[n].dim) for n in TABLES) + metadata
    assert spent <= ratio * fp32
    # the next row that was not promoted would not have fit: the budget is nearly used up
    assert spent >= ratio * fp32 - max(row_stride(Tier.FP32, 64), 2 * row_stride(Tier.FP16, 64))
    all_tiers = np.concatenate([tiers[n] for n in TABLES])
    all_p = np.concatenate([priorities[n] for n in TABLES])
    rank = {Tier.DROPPED: 0, Tier.INT2: 1, Tier.INT4: 2, Tier.INT8: 3, Tier.FP16: 4, Tier.FP32: 5}
    level = np.vectorize(lambda t: rank[Tier(t)])(all_tiers)
    for low in range(5):  # every row on a higher rung has priority ≥ every row below it
        if (level > low).any() and (level <= low).any():
            assert all_p[level > low].min() >= all_p[level <= low].max()


def test_int2_rung_reaches_below_the_int4_floor():
    priorities = _priorities(3)
    with pytest.raises(QuantConfigError, match="too small"):
        assign_tiers(QuantConfig(target_ratio=0.12, ladder=("int4", "int8", "fp16")), TABLES, priorities)
    for ladder in (("int2", "int4", "int8"), QuantConfig().ladder):  # the default ladder starts lower still
        tiers = assign_tiers(QuantConfig(target_ratio=0.12, ladder=ladder), TABLES, priorities)
        a = np.asarray(tiers["a.weight"])
        assert {Tier(t) for t in np.unique(a)} == {Tier.INT2, Tier.INT4}
        assert priorities["a.weight"][a == Tier.INT4].min() >= priorities["a.weight"][a == Tier.INT2].max()


@pytest.mark.parametrize("ratio", [0.01, 0.04, 0.08])
def test_default_ladder_drops_the_least_important_rows_first(ratio):
    """Below the int2 floor (8.7% of these tables, metadata included) the lowest-priority rows are dropped; every
    budget is met and every promotion follows priority."""
    priorities = _priorities(4)
    tiers = assign_tiers(QuantConfig(target_ratio=ratio), TABLES, priorities)
    fp32 = sum(t.num_rows * t.dim * 4 for t in TABLES.values())
    assert sum(_bytes(tiers[n], TABLES[n].dim) for n in TABLES) + _metadata(TABLES) <= ratio * fp32
    all_tiers = np.concatenate([tiers[n] for n in TABLES])
    all_p = np.concatenate([priorities[n] for n in TABLES])
    dropped = all_tiers == Tier.DROPPED
    assert dropped.any() and (~dropped).any()
    assert all_p[~dropped].min() >= all_p[dropped].max()
    assert set(np.unique(all_tiers[~dropped])) <= {Tier.INT2, Tier.INT4}


def test_budget_with_dropped_unseen_rows_and_overrides():
    priorities = _priorities(2)
    config = QuantConfig(target_ratio=0.2, drop_unseen=True, overrides={"b": "fp16"})
    tiers = assign_tiers(config, TABLES, priorities)
    b = tiers["b.weight"]
    np.testing.assert_array_equal(b, np.where(priorities["b.weight"] > 0, Tier.FP16, Tier.DROPPED))
    a = tiers["a.weight"]
    np.testing.assert_array_equal(a == Tier.DROPPED, priorities["a.weight"] <= 0)


def test_errors():
    with pytest.raises(QuantConfigError, match="unknown preset 'int3'"):
        QuantConfig("int3")
    with pytest.raises(QuantConfigError, match="override 'a': unknown preset 'bf16'"):
        QuantConfig(overrides={"a": "bf16"})
    with pytest.raises(QuantConfigError, match="target_ratio must be in"):
        QuantConfig(target_ratio=1.5)
    with pytest.raises(QuantConfigError, match="too small: the lowest rung int4"):
        assign_tiers(QuantConfig(target_ratio=0.05, ladder=("int4", "int8")), TABLES, _priorities())
    with pytest.raises(QuantConfigError, match="too small: the lowest rung dropped"):
        assign_tiers(QuantConfig(target_ratio=0.0001), TABLES, _priorities())  # not even the row metadata
    with pytest.raises(QuantConfigError, match=r"ladder \('int8', 'int4'\) must list distinct rungs from the cheapest up"):
        QuantConfig(ladder=("int8", "int4"))
    with pytest.raises(QuantConfigError, match="ladder rung 'int3'"):
        QuantConfig(ladder=("int3", "int8"))
    with pytest.raises(QuantConfigError, match="give calibration data"):
        assign_tiers(QuantConfig(target_ratio=0.3), TABLES, None)
    with pytest.raises(QuantConfigError, match=r"unknown table\(s\) \['c'\]"):
        assign_tiers(QuantConfig(overrides={"c": "fp16"}), TABLES, None)


def test_budget_greedy_matches_a_row_by_row_reference():
    """promote_rows (used by target_ratio and by benchmarks/bench_scoring.py's low budgets) against a plain
    loop: rung by rung, rows in descending priority (ties in row order), each promoted while the bytes fit;
    the first row that does not fit ends the climb."""
    from shark_export.format import Tier, row_stride
    from shark_export.quant_config import promote_rows, stored_bytes

    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(1, 300))
        dims = rng.choice([3, 8, 16, 64], size=n)
        priority = rng.integers(0, 6, size=n).astype(np.float64)  # many ties
        ladder = [Tier.DROPPED, Tier.INT2, Tier.INT4, Tier.INT8] if trial % 2 else [Tier.INT4, Tier.INT8, Tier.FP16]
        start = np.full(n, ladder[0], dtype=np.uint8)
        floor = stored_bytes(start, dims)
        budget = floor + float(rng.uniform(0, 1)) * sum(row_stride(ladder[-1], int(d)) for d in dims)

        want = start.copy()
        spent = float(sum(row_stride(Tier(int(t)), int(d)) for t, d in zip(want, dims)))
        order = sorted(range(n), key=lambda r: (-priority[r], r))
        stopped = False
        for low, high in zip(ladder, ladder[1:]):
            for r in order:
                if want[r] != low:
                    continue
                delta = row_stride(high, int(dims[r])) - row_stride(low, int(dims[r]))
                if spent + delta > budget:
                    stopped = True
                    break
                want[r] = high
                spent += delta
            if stopped:
                break
        got = promote_rows(priority, dims, ladder, start.copy(), budget)
        np.testing.assert_array_equal(got, want)
        assert stored_bytes(got, dims) <= budget
