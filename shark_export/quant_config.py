"""Which tier each embedding row gets: presets, per-table overrides, and a byte budget over row priorities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import SharkExportError
from .format import FORMAT_VERSION, GROUPED_FORMAT_VERSION, MAX_GROUP_ROWS, Tier, group_section_bytes, row_stride
from .lookup_spec import FLOAT, FLOAT16
from .tiers import BY_PRECISION
from .row_ranking import RowRanking, SparseRows

PRESETS = ("fp32", "fp16", "int8", "int4", "mixed")
# scale_group="auto": tables of dim <= AUTO_GROUP_MAX_DIM share scales in groups of AUTO_GROUP_ROWS rows. There
# a row's own 4-byte [scale][bias] is >= 20% of an int4 row; on MovieLens (D = 16) int4 in groups of 256 with
# the l2 clip search lost no AUC (benchmarks/RESULTS_scoring.md), and the group section costs 12/256 B/row.
AUTO_GROUP_MAX_DIM = 32
AUTO_GROUP_ROWS = 256
_SINGLE = {"fp32": Tier.FP32, "fp16": Tier.FP16, "int8": Tier.INT8, "int4": Tier.INT4}
# int2 and dropped (the row reads the table's default row: the mean of its dropped rows) may be budget
# rungs, not whole-table presets. Listed from the cheapest to the most precise.
_RUNGS = {str(t): t for t in reversed(BY_PRECISION)}


class QuantConfigError(SharkExportError, ValueError):
    """An invalid quantization configuration (unknown preset, table, impossible budget)."""


@dataclass
class QuantConfig:
    """How to store each table.

    - `preset`: tier of every table without an override: "fp32", "fp16", "int8", "int4", or "mixed"
      (by row priority, ranked over the rows of all mixed tables together: the top `mixed_fractions[0]` of
      rows fp16, the next `mixed_fractions[1]` int8, the rest int4; without calibration data every row
      gets int8).
    - `overrides`: table name (parameter name, e.g. "emb.user.weight") or module path → preset.
    - `target_ratio`: byte budget as a fraction of the fp32 bytes of the tables without an override. Rows
      start at `ladder[0]`; then, in priority order, rows are promoted one rung at a time (all the rows that
      fit to the second rung, then to the third, …) while the budget lasts. The default ladder starts at
      dropped rows (they read the table's default row, the mean of its dropped rows) and int2, so any budget
      down to the row metadata (0.5 B/row) can be met; above the int4 floor it gives what a ladder starting
      at int4 gives. Needs calibration data.
    - `ladder`: the rungs, cheapest first, from "dropped", "int2", "int4", "int8", "fp16", "fp32".
    - `drop_unseen`: rows never seen in the calibration data are dropped: they read as one shared default
      vector (the mean of the dropped rows) and cost no bytes.
    - `clip`: "none" (min/max) or "l2" (per-row clipping search minimizing the L2 error).
    - `output_dtype`: "float32" or "float16" lookup outputs.
    - `scale_group`: where a quantized row's scale and bias live. "auto" (default): every row keeps the error
      bound of its tier under its own range. Tables of dim ≤ 32 are tried in format v3 (one scale and bias per
      tier shared by each group of 256 rows, quantized rows are codes only), and kept so only when every
      quantized row stays within its own bound and the table is smaller; otherwise a header per row (v2;
      shark_export.row_bounds). "none" (or 0): a header per row everywhere. A power of two G: the user asks
      for shared scales, groups of G rows for every table (rows share their group's range). All-zero rows
      read exactly zero under every setting.
    """

    preset: str = "int8"
    overrides: dict[str, str] = field(default_factory=dict)
    target_ratio: float | None = None
    ladder: tuple[str, ...] = ("dropped", "int2", "int4", "int8", "fp16", "fp32")
    mixed_fractions: tuple[float, float] = (0.02, 0.20)
    drop_unseen: bool = False
    clip: str = "none"
    output_dtype: str = "float32"
    scale_group: int | str = "auto"

    def __post_init__(self) -> None:
        for name, preset in [("preset", self.preset), *((f"override {k!r}", v) for k, v in self.overrides.items())]:
            if preset not in PRESETS:
                raise QuantConfigError(f"{name}: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if self.target_ratio is not None and not 0.0 < self.target_ratio <= 1.0:
            raise QuantConfigError(f"target_ratio must be in (0, 1], got {self.target_ratio}")
        for rung in self.ladder:
            if rung not in _RUNGS:
                raise QuantConfigError(f"ladder rung {rung!r} must be one of {', '.join(_RUNGS)}")
        order = list(_RUNGS)
        if not self.ladder or [order.index(r) for r in self.ladder] != sorted({order.index(r) for r in self.ladder}):
            raise QuantConfigError(f"ladder {tuple(self.ladder)} must list distinct rungs from the cheapest up "
                                   f"(in the order {', '.join(_RUNGS)})")
        hot, warm = self.mixed_fractions
        if not (0 <= hot and 0 <= warm and hot + warm <= 1):
            raise QuantConfigError(f"mixed_fractions {self.mixed_fractions} must be ≥ 0 and sum to ≤ 1")
        if self.clip not in ("none", "l2"):
            raise QuantConfigError(f"clip must be 'none' or 'l2', got {self.clip!r}")
        if self.output_dtype not in ("float32", "float16"):
            raise QuantConfigError(f"output_dtype must be 'float32' or 'float16', got {self.output_dtype!r}")
        g = self.scale_group
        if isinstance(g, str):
            if g.strip().lower() not in ("auto", "none") and not g.strip().isdigit():
                raise QuantConfigError(f"scale_group must be 'auto', 'none' or a power of two, got {g!r}")
            g = g.strip().lower()
            self.scale_group = int(g) if g.isdigit() else g
            g = self.scale_group
        if not isinstance(g, str):
            if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 0 or g > MAX_GROUP_ROWS or (g & (g - 1)):
                raise QuantConfigError(f"scale_group must be 'auto', 'none' (0) or a power of two up to 2^40, got {g!r}")
            self.scale_group = int(g)

    def budget_group_rows_for(self, dim: int) -> int:
        """Rows per scale group a byte budget plans with: groups the user asked for, and none under "auto",
        whose groups stay only where they cost no row its own bound (so a budget is never overspent)."""
        return 0 if self.scale_group == "auto" else self.group_rows_for(dim)

    def group_rows_for(self, dim: int) -> int:
        """Rows per scale group of a table of `dim` (format v3), or 0 for a header per row (v2)."""
        if self.scale_group == "auto":
            return AUTO_GROUP_ROWS if dim <= AUTO_GROUP_MAX_DIM else 0
        if self.scale_group == "none":
            return 0
        return int(self.scale_group)

    @staticmethod
    def of(quant: "str | QuantConfig") -> "QuantConfig":
        if isinstance(quant, QuantConfig):
            return quant
        if isinstance(quant, str):
            return QuantConfig(preset=quant)
        raise QuantConfigError(f"quant must be a preset name or a QuantConfig, got {type(quant).__name__}")

    @property
    def output_onnx_dtype(self) -> int:
        return FLOAT if self.output_dtype == "float32" else FLOAT16

    @property
    def needs_priorities(self) -> bool:
        presets = {self.preset, *self.overrides.values()}
        return "mixed" in presets or self.target_ratio is not None or self.drop_unseen

    def preset_of(self, table: str, module_paths: tuple[str, ...] = ()) -> str | None:
        """The override for the table, or None when it follows the preset (or the budget)."""
        for key in (table, *module_paths):
            if key in self.overrides:
                return self.overrides[key]
        return None

    def check_tables(self, tables: dict) -> None:
        known = set(tables) | {p for t in tables.values() for p in t.module_paths}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise QuantConfigError(f"overrides name unknown table(s) {unknown}; the tables are: {sorted(tables)}")


def _mixed_tiers_by_rank(priorities: dict[str, SparseRows], fractions: tuple[float, float],
                         drop_unseen: bool = False) -> dict[str, np.ndarray]:
    """The mixed split over the rows of all the given tables at once: a row's precision follows how often it is
    read, whatever its table (a position table read by every sample keeps its precision; a per-table split
    would put most of it in int4). The top fractions[0] of the rows fp16, the next fractions[1] int8, the rest
    int4; with `drop_unseen`, rows of priority <= 0 dropped."""
    ranking = RowRanking(priorities)
    n_hot = int(round(fractions[0] * ranking.total))
    n_warm = int(round(fractions[1] * ranking.total))
    bounds, tiers = [n_hot, n_hot + n_warm, ranking.total], [Tier.FP16, Tier.INT8, Tier.INT4]
    if drop_unseen:  # rows of priority <= 0 (ranks from P on): dropped
        bounds = [min(b, ranking.positives) for b in bounds[:2]] + [ranking.positives, ranking.total]
        tiers = [Tier.FP16, Tier.INT8, Tier.INT4, Tier.DROPPED]
    return ranking.tiers(bounds, tiers)


def _version(grouped: int) -> int:
    return GROUPED_FORMAT_VERSION if grouped else FORMAT_VERSION


def promote_rows(priority: np.ndarray, dims: np.ndarray, ladder: list[Tier], tiers: np.ndarray, budget: float,
                 grouped: np.ndarray | None = None) -> np.ndarray:
    """The budget greedy: rows at `ladder[k]` move up to `ladder[k + 1]`, rung by rung, in descending priority
    (ties in row order), while the stored bytes stay within `budget`; a rung that does not fit whole ends
    the climb. `tiers` (one per row, each a rung or DROPPED) is updated in place and returned. `dims`: each
    row's dimension; `grouped`: 1 where the row's table shares scales in groups (v3 strides), else 0."""
    grouped = np.zeros_like(dims) if grouped is None else grouped.astype(np.int64)
    keys, key_index = np.unique(np.stack([dims.astype(np.int64), grouped]), axis=1, return_inverse=True)
    key_index = key_index.reshape(-1)

    def cost(tier: Tier) -> np.ndarray:
        return np.array([row_stride(tier, int(d), _version(g)) for d, g in keys.T], dtype=np.int64)[key_index]

    spent = stored_bytes(tiers, dims, grouped)
    order = np.argsort(-priority, kind="stable")
    for low, high in zip(ladder, ladder[1:]):
        candidates = order[tiers[order] == low]
        delta = (cost(high) - cost(low))[candidates]
        fits = int(np.searchsorted(np.cumsum(delta), budget - spent, side="right"))
        tiers[candidates[:fits]] = high
        spent += float(delta[:fits].sum())
        if fits < candidates.shape[0]:
            break
    return tiers


def stored_bytes(tiers: np.ndarray, dims: np.ndarray, grouped: np.ndarray | None = None) -> float:
    """Payload bytes of rows stored at `tiers` (one per row) with dimensions `dims` (dropped rows: none);
    `grouped` as in `promote_rows`."""
    grouped = np.zeros_like(dims) if grouped is None else grouped
    keys, counts = np.unique(np.stack([tiers.astype(np.int64), dims.astype(np.int64), grouped.astype(np.int64)]), axis=1,
                             return_counts=True)
    return float(sum(row_stride(Tier(int(t)), int(d), _version(g)) * int(n) for t, d, g, n in zip(*keys, counts)))


def _budget_tiers(config: QuantConfig, shapes: dict[str, tuple[int, int]], priorities: dict[str, SparseRows]) -> dict[str, np.ndarray]:
    """Promote rows rung by rung in global priority order while the byte budget lasts (the greedy of
    `promote_rows`, on a sparse ranking: rows calibration never saw are ranked in a block)."""
    names = list(shapes)
    fp32_bytes = sum(rows * dim * 4 for rows, dim in shapes.values())
    # row_meta of a mixed table (32 bytes per block of 64 rows), the default row and the v3 group section
    metadata = sum(-(-rows // 64) * 32 + dim * 4 + group_section_bytes(rows, config.budget_group_rows_for(dim))
                   for rows, dim in shapes.values())
    budget = config.target_ratio * fp32_bytes - metadata
    ranking = RowRanking({n: priorities[n] for n in names})
    versions = [_version(int(config.budget_group_rows_for(shapes[n][1]) > 0)) for n in names]

    def cost(tier: Tier) -> np.ndarray:  # bytes of one row of each table at `tier`
        return np.array([row_stride(tier, shapes[n][1], v) for n, v in zip(names, versions)], dtype=np.int64)

    ladder = [_RUNGS[r] for r in config.ladder]
    # drop_unseen: rows never seen (priority <= 0) stay dropped, whatever the budget (they take no part in the climb)
    climbing = ranking.positives if config.drop_unseen else ranking.total
    per_table = ranking.positive_per_table if config.drop_unseen else ranking.rows  # climbing rows of each table
    spent = float((per_table * cost(ladder[0])).sum())
    if spent > budget:
        raise QuantConfigError(
            f"target_ratio {config.target_ratio} is too small: the lowest rung {config.ladder[0]} alone needs "
            f"{(spent + metadata) / fp32_bytes:.4f} of the fp32 bytes"
        )
    level, promoted = 0, 0  # every climbing row at ladder[level]; the first `promoted` in rank order one rung up
    for low, high in zip(ladder, ladder[1:]):
        delta = cost(high) - cost(low)
        total = float((per_table * delta).sum())
        if spent + total <= budget:
            spent += total
            level += 1
            continue
        promoted = ranking.prefix_within(delta, budget - spent, zeros_and_negatives=not config.drop_unseen)
        break
    bounds = [promoted, climbing, ranking.total]
    tiers = [ladder[min(level + 1, len(ladder) - 1)], ladder[level], Tier.DROPPED]
    return ranking.tiers(bounds, tiers)


def assign_tiers(config: QuantConfig, tables: dict, priorities: dict | None) -> dict[str, np.ndarray | Tier]:
    """Tier per row (uint8 [R]) or one Tier per table, for the given tables (name → fields.Table). `priorities`:
    table → row priorities, a dense array or a row_ranking.SparseRows (row_priority.score_rows gives these)."""
    config.check_tables(tables)
    if priorities is None and (config.target_ratio is not None or config.drop_unseen):
        raise QuantConfigError("target_ratio and drop_unseen assign tiers by row priority: give calibration data")
    result: dict[str, np.ndarray | Tier] = {}
    budgeted = {}
    ranked = {}  # mixed-preset tables with priorities: ranked together below
    for name, table in tables.items():
        preset = config.preset_of(name, table.module_paths)
        if preset is None and config.target_ratio is not None:
            budgeted[name] = (table.num_rows, table.dim)
            continue
        preset = preset or config.preset
        # A table no module call reads (F.embedding on a parameter) has no row priorities.
        priority = priorities.get(name) if priorities is not None else None
        if priority is not None:
            priority = SparseRows.of(priority, table.num_rows)
        if preset == "mixed" and priority is not None:
            ranked[name] = priority
            continue
        tiers = Tier.INT8 if preset == "mixed" else _SINGLE[preset]
        if config.drop_unseen and priority is not None:  # only the rows seen (priority > 0) keep the tier
            seen = priority.ids[priority.values > 0]
            per_row = np.full(table.num_rows, Tier.DROPPED, dtype=np.uint8)
            per_row[seen] = tiers
            tiers = per_row
        result[name] = tiers
    if ranked:
        result.update(_mixed_tiers_by_rank(ranked, config.mixed_fractions, config.drop_unseen))
    if budgeted:
        result.update(_budget_tiers(config, budgeted, {
            n: SparseRows.of(priorities[n], budgeted[n][0]) if n in priorities
            else SparseRows(budgeted[n][0], np.zeros(0, np.int64), np.zeros(0, np.float32)) for n in budgeted}))
    return result


# --- storage: the cheapest tier that is at least as precise, and uniform vs mixed ------------------------

_BY_PRECISION = tuple(t for t in BY_PRECISION if t is not Tier.DROPPED)  # the stored tiers, most precise first
_META_BLOCK_BYTES = 32  # one row_meta block (64 rows)


def cheapest_tier(tier: Tier, dim: int, scale_group_rows: int = 0) -> Tier:
    """The tier with the fewest row bytes among `tier` and the tiers more precise than it (ties go to the more
    precise one): at D = 1 an int8 row (5 B) becomes fp16 (2 B); at D = 4 int8 (8 B) becomes fp16 (8 B). With
    scale groups (v3) quantized rows are codes only, so they are never dearer than fp16."""
    tier = Tier(tier)
    if tier is Tier.DROPPED:
        return tier
    version = _version(scale_group_rows)
    candidates = _BY_PRECISION[: _BY_PRECISION.index(tier) + 1]
    return min(candidates, key=lambda t: (row_stride(t, dim, version), _BY_PRECISION.index(t)))


def _table_bytes(counts: dict[Tier, int], rows: int, dim: int, scale_group_rows: int = 0) -> int:
    version = _version(scale_group_rows)
    stored = sum(n * row_stride(t, dim, version) for t, n in counts.items())
    present = [t for t, n in counts.items() if n]
    meta = 0 if len(present) <= 1 else _META_BLOCK_BYTES * -(-rows // 64)
    groups = group_section_bytes(rows, scale_group_rows) if any(t.is_quantized for t in present) else 0
    return stored + meta + groups + (4 * dim if counts.get(Tier.DROPPED) else 0)


def plan_storage(tiers: "np.ndarray | Tier", rows: int, dim: int,
                 scale_group_rows: int = 0) -> tuple["np.ndarray | Tier", str, int]:
    """Tiers as stored, decided from the real row bytes, a note saying what changed and why, and the rows per
    scale group the table is stored with (0: a header per quantized row, format v2).

    1. Every row takes the cheapest tier at least as precise as the one it was given (`cheapest_tier`).
    2. A mixed table becomes uniform at its most precise tier when that costs no more than the mixed
       layout (the block index is 32 bytes per 64 rows, the default row 4·D bytes when rows are dropped):
       tiny tables are never made bigger by per-table overhead.
    3. Scale groups (`scale_group_rows`, v3) are kept only for a table that stores quantized rows and
       costs fewer bytes with them than with a header per row (the group section is 12 bytes per group).
    Whatever the tiers, the stored table never takes more bytes than the fp32 table: a plan that would is
    stored uniform fp32 instead.
    """
    stored, notes = _plan_tiers(tiers, rows, dim, scale_group_rows)
    group = scale_group_rows
    if group:
        counts = _counts(stored, rows)
        plain_tiers, plain_notes = _plan_tiers(tiers, rows, dim, 0)
        plain = _table_bytes(_counts(plain_tiers, rows), rows, dim, 0)
        grouped = _table_bytes(counts, rows, dim, group)
        # Ties keep a header per row: as many bytes, each row with its own range.
        if not any(t.is_quantized for t, n in counts.items() if n) or grouped >= plain:
            stored, notes, group = plain_tiers, plain_notes, 0
        else:
            notes.append(f"v3: scale groups of {group} rows ({grouped} B against {plain} B with a header per row)")
    total = _table_bytes(_counts(stored, rows), rows, dim, group)
    if total > 4 * rows * dim:
        notes.append(f"uniform fp32: the plan's {total} B exceed the fp32 table's {4 * rows * dim} B")
        return Tier.FP32, "; ".join(notes), 0
    return stored, "; ".join(notes), group


def _counts(tiers: "np.ndarray | Tier", rows: int) -> dict[Tier, int]:
    if isinstance(tiers, Tier):
        return {tiers: rows}
    counts = np.bincount(np.asarray(tiers, dtype=np.uint8), minlength=len(Tier))  # no sort of a per-row array
    return {Tier(t): int(n) for t, n in enumerate(counts) if n}


def _plan_tiers(tiers: "np.ndarray | Tier", rows: int, dim: int, scale_group_rows: int) -> tuple["np.ndarray | Tier", list[str]]:
    """Steps 1 and 2 of `plan_storage` for one storage layout."""
    version = _version(scale_group_rows)

    def nbytes(t: Tier) -> int:
        return row_stride(t, dim, version)

    notes = []
    if isinstance(tiers, (Tier, int, np.integer)):
        given = Tier(int(tiers))
        stored = cheapest_tier(given, dim, scale_group_rows)
        if stored is not given:
            notes.append(f"{given}→{stored} ({nbytes(stored)} B/row ≤ {nbytes(given)} B/row)")
        return stored, notes
    codes = np.asarray(tiers, dtype=np.uint8).copy()
    lut = np.array([cheapest_tier(Tier(c), dim, scale_group_rows) if c < len(Tier) else c for c in range(8)], dtype=np.uint8)
    for code in np.unique(codes):
        if lut[code] != code:
            notes.append(f"{Tier(int(code))}→{Tier(int(lut[code]))} ({nbytes(Tier(int(lut[code])))} B/row ≤ "
                         f"{nbytes(Tier(int(code)))} B/row)")
    codes = lut[codes]
    present = np.unique(codes)
    if present.shape[0] == 1:
        return Tier(int(present[0])), notes
    counts = _counts(codes, rows)
    stored_tiers = [t for t in _BY_PRECISION if counts.get(t)]
    if stored_tiers:
        top = stored_tiers[0]
        mixed_bytes = _table_bytes(counts, rows, dim, scale_group_rows)
        uniform_bytes = _table_bytes({top: rows}, rows, dim, scale_group_rows)
        if uniform_bytes <= mixed_bytes:
            notes.append(f"uniform {top}: {uniform_bytes} B ≤ {mixed_bytes} B mixed")
            return top, notes
    return codes, notes
