"""Sparse rankings give the tiers a dense stable argsort gives (shark_export.row_ranking, issue 22: memory that
follows the rows calibration saw). The reference here ranks the concatenated dense priorities with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from shark_export.fields import Table
from shark_export.format import Tier
from shark_export.quant_config import QuantConfig, QuantConfigError, _RUNGS, assign_tiers, promote_rows, stored_bytes
from shark_export.format import group_section_bytes
from shark_export.row_ranking import RowRanking, SparseRows


def _tables(rng) -> dict[str, Table]:
    dims = rng.choice([4, 16, 24, 64], size=int(rng.integers(1, 4)))
    return {f"t{k}.weight": Table(f"t{k}.weight", (f"t{k}",), int(rng.integers(1, 400)), int(d)) for k, d in enumerate(dims)}


def _priorities(rng, tables) -> dict[str, np.ndarray]:
    """Mostly zeros (unseen rows), ties (small integers), some negatives."""
    out = {}
    for name, t in tables.items():
        p = rng.integers(-2, 6, t.num_rows).astype(np.float32)
        p[rng.random(t.num_rows) < rng.random()] = 0
        out[name] = p
    return out


def _dense_mixed(priorities: dict, fractions, drop_unseen: bool) -> dict[str, np.ndarray]:
    names = list(priorities)
    priority = np.concatenate([priorities[n].astype(np.float64) for n in names])
    order = np.argsort(-priority, kind="stable")
    n_hot, n_warm = int(round(fractions[0] * priority.shape[0])), int(round(fractions[1] * priority.shape[0]))
    tiers = np.full(priority.shape[0], Tier.INT4, dtype=np.uint8)
    tiers[order[:n_hot]] = Tier.FP16
    tiers[order[n_hot:n_hot + n_warm]] = Tier.INT8
    if drop_unseen:
        tiers[priority <= 0] = Tier.DROPPED
    bounds = np.cumsum([0] + [priorities[n].shape[0] for n in names])
    return {n: tiers[bounds[i]:bounds[i + 1]] for i, n in enumerate(names)}


def _dense_budget(config: QuantConfig, tables, priorities) -> dict[str, np.ndarray]:
    names = list(tables)
    fp32 = sum(t.num_rows * t.dim * 4 for t in tables.values())
    metadata = sum(-(-t.num_rows // 64) * 32 + t.dim * 4 + group_section_bytes(t.num_rows, config.budget_group_rows_for(t.dim))
                   for t in tables.values())
    budget = config.target_ratio * fp32 - metadata
    priority = np.concatenate([priorities[n].astype(np.float64) for n in names])
    dims = np.concatenate([np.full(tables[n].num_rows, tables[n].dim) for n in names])
    grouped = np.concatenate([np.full(tables[n].num_rows, int(config.budget_group_rows_for(tables[n].dim) > 0)) for n in names])
    ladder = [_RUNGS[r] for r in config.ladder]
    tiers = np.full(priority.shape[0], ladder[0], dtype=np.uint8)
    climbing = priority > 0 if config.drop_unseen else np.ones(priority.shape[0], dtype=bool)
    tiers[~climbing] = Tier.DROPPED
    if stored_bytes(tiers, dims, grouped) > budget:
        return None
    tiers[climbing] = promote_rows(priority[climbing], dims[climbing], ladder, tiers[climbing], budget, grouped[climbing])
    bounds = np.cumsum([0] + [tables[n].num_rows for n in names])
    return {n: tiers[bounds[i]:bounds[i + 1]] for i, n in enumerate(names)}


def _as_arrays(assigned: dict, tables) -> dict[str, np.ndarray]:
    return {n: np.full(tables[n].num_rows, v, np.uint8) if isinstance(v, Tier) else v for n, v in assigned.items()}


@pytest.mark.parametrize("seed", range(40))
def test_mixed_tiers_match_a_dense_stable_sort(seed):
    rng = np.random.default_rng(seed)
    tables = _tables(rng)
    priorities = _priorities(rng, tables)
    fractions = (float(rng.uniform(0, 0.5)), float(rng.uniform(0, 0.5)))
    drop = bool(rng.integers(2))
    config = QuantConfig("mixed", mixed_fractions=fractions, drop_unseen=drop)
    sparse = {n: SparseRows.of(p, tables[n].num_rows) for n, p in priorities.items()}
    for given in (priorities, sparse):
        got = _as_arrays(assign_tiers(config, tables, given), tables)
        want = _dense_mixed(priorities, fractions, drop)
        for name in tables:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} seed {seed}")


@pytest.mark.parametrize("seed", range(60))
def test_budget_tiers_match_the_dense_greedy(seed):
    rng = np.random.default_rng(100 + seed)
    tables = _tables(rng)
    priorities = _priorities(rng, tables)
    ladders = [("dropped", "int2", "int4", "int8", "fp16", "fp32"), ("int4", "int8", "fp16"), ("int2", "int8")]
    config = QuantConfig(target_ratio=float(rng.uniform(0.01, 0.6)), ladder=ladders[int(rng.integers(3))],
                         drop_unseen=bool(rng.integers(2)), scale_group=["auto", "none", "64"][int(rng.integers(3))])
    want = _dense_budget(config, tables, priorities)
    if want is None:
        with pytest.raises(QuantConfigError, match="too small"):
            assign_tiers(config, tables, priorities)
        return
    got = _as_arrays(assign_tiers(config, tables, priorities), tables)
    for name in tables:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} seed {seed} {config}")


def test_zero_rows_are_found_by_position_without_being_listed():
    ranking = RowRanking({"a": SparseRows(10, np.array([0, 3, 4, 9]), np.array([1, 2, -1, 0], np.float32)),
                          "b": SparseRows(5, np.array([2]), np.array([7], np.float32))})
    # positions 0..9 are a, 10..14 b; nonzero: 0, 3, 4, 12 (row 9's listed 0 counts as a zero row)
    assert ranking.positives == 3 and ranking.zeros == 11 and ranking.total == 15
    zeros = [p for p in range(15) if p not in (0, 3, 4, 12)]
    assert [ranking.zero_position(k) for k in range(11)] == zeros
    assert ranking.zero_position(11) == 15
    assert list(ranking.positive) == [12, 3, 0] and list(ranking.negative) == [4]
