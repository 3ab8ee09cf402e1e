"""Every row keeps its tier's error bound under its own range, and zero rows read exactly zero (issue 20.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shark_export import QuantConfig, convert
from shark_export.format import Tier
from shark_export.inspect_model import read_tables
from shark_export.quant_config import plan_storage
from shark_export.reference import dequantize
from shark_export.row_bounds import store_tables

LEVELS = {Tier.INT8: 255, Tier.INT4: 15, Tier.INT2: 3}


def spread_table(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Rows whose ranges span 1e-4 … 10 (hot rows large, rare rows near their init), two all-zero rows."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, dim)) * 10.0 ** rng.uniform(-4, 1, size=(rows, 1))
    w[[0, rows // 2]] = 0.0
    return w.astype(np.float32)


def independent_bound(w: np.ndarray, tier: Tier) -> np.ndarray:
    """Row-wise bound from the row's own range, written from FORMAT.md without the package: half a step of
    span / L, the step widened by the fp16 rounding of the row's bias (down: at most 2^-10 |min|, or the
    subnormal quantum 2^-24) and scale (up: 2^-10 relative, or 2^-24), plus float32 rounding of the result."""
    x = w.astype(np.float64)
    mn, mx = x.min(axis=1), x.max(axis=1)
    step = (mx - mn + np.maximum(np.abs(mn) * 2.0**-10, 2.0**-24)) / LEVELS[tier] * (1 + 2.0**-10) + 2.0**-24
    return step / 2 + np.abs(x).max(axis=1) * 2.0**-23


def stored_errors(w: np.ndarray, table) -> np.ndarray:
    return np.abs(dequantize(table).astype(np.float64) - w.astype(np.float64)).max(axis=1)


@pytest.mark.parametrize("dim", [4, 16, 24])
@pytest.mark.parametrize("tier", [Tier.INT8, Tier.INT4, Tier.INT2])
@pytest.mark.parametrize("clip", ["none", "l2"])
def test_auto_groups_keep_every_rows_own_bound(dim, tier, clip):
    w = spread_table(1200, dim)
    grouped, _, g = plan_storage(tier, w.shape[0], dim, QuantConfig().group_rows_for(dim))
    plain = plan_storage(tier, w.shape[0], dim, 0)[0]
    tables, notes = store_tables({"t": w}, {"t": (grouped, g, plain if g else None)}, clip)
    errors = stored_errors(w, tables["t"])
    if clip == "none":
        assert np.all(errors <= independent_bound(w, tier)), notes["t"]
    else:  # the clipping the user asked for, on each row's own range: no row worse than its own clipped row
        own = store_tables({"t": w}, {"t": (plain, 0, None)}, clip)[0]["t"]
        assert np.all(errors <= np.maximum(stored_errors(w, own), independent_bound(w, tier))), notes["t"]
    assert np.all(dequantize(tables["t"])[[0, w.shape[0] // 2]] == 0.0)


def test_groups_stay_where_they_are_free():
    """Rows that share one range (a quantized table of identical-range rows) keep the v3 saving."""
    base = np.linspace(-1.0, 1.0, 16, dtype=np.float32)
    w = np.stack([np.roll(base, k) for k in range(2048)])
    grouped, _, g = plan_storage(Tier.INT4, 2048, 16, 256)
    plain = plan_storage(Tier.INT4, 2048, 16, 0)[0]
    tables, notes = store_tables({"t": w}, {"t": (grouped, g, plain)})
    t = tables["t"]
    assert t.format_version == 3 and t.scale_group_rows == 256, notes["t"]
    b = t.byte_report()
    assert (b.payload + b.scales + b.metadata) / 2048 <= 16 * 4 / 8 + 1.5
    assert np.all(stored_errors(w, t) <= independent_bound(w, Tier.INT4))


@pytest.mark.parametrize("group_rows", [0, 1, 256])
@pytest.mark.parametrize("tier", list(Tier))
def test_zero_rows_read_exactly_zero_in_every_tier_and_grouping(tier, group_rows):
    w = spread_table(300, 12, seed=3)
    tiers = np.full(300, int(tier), dtype=np.uint8)
    tiers[::7] = Tier.DROPPED  # other rows dropped too: their mean (the default row) is not zero
    tables, _ = store_tables({"t": w}, {"t": (tiers, group_rows, None)})
    out = dequantize(tables["t"])
    assert np.all(out[[0, 150]] == 0.0) and not np.signbit(out[[0, 150]]).any()


def _padded_model(rows: int, dim: int) -> torch.nn.Module:
    class Padded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(rows, dim, padding_idx=0)
            self.bag = torch.nn.EmbeddingBag(rows, dim, mode="sum", padding_idx=0)
            with torch.no_grad():
                for table in (self.emb.weight, self.bag.weight):
                    table.copy_(torch.from_numpy(spread_table(rows, dim, seed=1)))
                    table[0] = 0.0
            self.out = torch.nn.Linear(2 * dim, 1)

        def forward(self, ids, hist):
            return self.out(torch.cat([self.emb(ids), self.bag(hist)], dim=1)).squeeze(-1)

    return Padded().eval()


@pytest.mark.parametrize("quant", ["int8", "int4", "mixed", QuantConfig(target_ratio=0.08), QuantConfig("int4", scale_group=256)],
                         ids=["int8", "int4", "mixed", "budget", "int4-shared"])
def test_converted_tables_keep_bounds_and_padding_rows(tmp_path, quant):
    rows, dim = 600, 16
    model = _padded_model(rows, dim)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, rows, (64,), generator=gen), torch.randint(0, rows, (64, 5), generator=gen)) for _ in range(3)]
    labels = [torch.randint(0, 2, (64,), generator=gen).float() for _ in range(3)]
    report = convert(model, batches[0], tmp_path / "m.onnx", quant=quant, calibration=batches, labels=labels)
    assert report.faithfulness, str(report.faithfulness)
    tables, _ = read_tables(tmp_path / "m.onnx")
    shared = isinstance(quant, QuantConfig) and quant.scale_group == 256
    for name, table in tables.items():
        w = dict(model.named_parameters())[name].detach().numpy()
        out = dequantize(table)
        assert np.all(out[0] == 0.0), f"{name}: the padding row reads {out[0][:4]}"
        if shared:
            continue  # the user asked for shared scales: rows share their group's range
        codes = table.tiers()
        errors = np.abs(out.astype(np.float64) - w).max(axis=1)
        for tier in (Tier.INT8, Tier.INT4, Tier.INT2):
            sel = codes == tier
            assert np.all(errors[sel] <= independent_bound(w[sel], tier)), f"{name} {tier}"


def test_budget_is_not_overspent_when_groups_fall_back(tmp_path):
    rows, dim = 600, 16
    model = _padded_model(rows, dim)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, rows, (64,), generator=gen), torch.randint(0, rows, (64, 5), generator=gen)) for _ in range(3)]
    report = convert(model, batches[0], tmp_path / "m.onnx", quant=QuantConfig(target_ratio=0.2), calibration=batches)
    fp32 = sum(t.fp32_bytes for t in report.tables)
    stored = sum(t.payload_bytes + t.scale_bytes + t.metadata_bytes for t in report.tables)
    assert stored <= 0.2 * fp32 * 1.01  # zero rows kept exact may add a few bytes
