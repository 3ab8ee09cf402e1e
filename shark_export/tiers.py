"""The tier table: every precision a stored row can have, with its code, bits, bytes, encoding and decoding.
Adding a tier starts here (docs/ARCHITECTURE.md, "Adding a tier"): the rest of the Python side reads this table.
A leaf module apart from the error types."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FormatError

MAX_DIM = 65536
#: Bytes of a quantized row's [scale f16][bias f16] header (in the row before v3, in its group's record in v3).
HEADER_BYTES = 4


class Tier(enum.IntEnum):
    """Precision of one stored row; the value is the 3-bit code stored in ``row_meta``."""

    FP32 = 0
    FP16 = 1
    INT8 = 2
    INT4 = 3
    INT2 = 4
    DROPPED = 5

    @property
    def spec(self) -> "TierSpec":
        return TIERS[self]

    @property
    def bits(self) -> int:
        """Bits per element (0 for a dropped row)."""
        return TIERS[self].bits

    @property
    def is_quantized(self) -> bool:
        """True for the tiers stored as codes with a ``[scale f16][bias f16]`` pair (int8, int4, int2)."""
        return TIERS[self].kind == "codes"

    @property
    def levels(self) -> int:
        """``L = 2^bits - 1``, the largest code of a quantized tier (0 for fp32/fp16/dropped)."""
        return (1 << self.bits) - 1 if self.is_quantized else 0

    @classmethod
    def parse(cls, value: Any) -> "Tier":
        """A Tier from a Tier, an int code, or a name (``"int8"``, ``"FP16"``, ``"float32"``, ``"drop"``)."""
        if isinstance(value, Tier):
            return value
        if isinstance(value, (bool, np.bool_)):
            raise FormatError(f"tier must be a Tier, a code 0..{len(Tier) - 1} or a name, got {value!r}")
        if isinstance(value, (int, np.integer)):
            code = int(value)
            if 0 <= code < len(Tier):
                return cls(code)
            raise FormatError(f"invalid tier code {code} (valid codes: 0..{len(cls) - 1})")
        if isinstance(value, str):
            key = value.strip().lower()
            found = next((t for t, spec in TIERS.items() if key == t.name.lower() or key in spec.aliases), None)
            if found is not None:
                return found
            if key.isdigit():
                return cls.parse(int(key))
            raise FormatError(f"unknown tier name {value!r} (valid: {', '.join(t.name.lower() for t in Tier)})")
        raise FormatError(f"tier must be a Tier, a code 0..{len(Tier) - 1} or a name, got {value!r} ({type(value).__name__})")

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class TierSpec:
    """How a tier stores a row. `kind`: "float" (the values at `dtype`), "codes" (`bits`-bit codes, packed
    little-endian within each byte, plus a scale and bias), or "dropped" (no bytes: the table's default row)."""

    bits: int
    kind: str
    dtype: str | None = None  # numpy dtype of a float tier's values
    aliases: tuple[str, ...] = ()
    # A codes tier's clipping search (row_codes.l2_clip_range): (bins, steps); each step tries two ranges.
    # int4/int2: steps of 1% of the range, shrinking it by up to 50%. int8: its error surface is jagged at coarse
    # steps (a 1% clip rarely beats min/max), so steps of 1/800 of the range, shrinking it by up to 10%.
    clip_search: tuple[int, int] | None = None


TIERS = {
    Tier.FP32: TierSpec(32, "float", "<f4", ("float32", "f32", "float")),
    Tier.FP16: TierSpec(16, "float", "<f2", ("float16", "f16", "half")),
    Tier.INT8: TierSpec(8, "codes", clip_search=(800, 80)),
    Tier.INT4: TierSpec(4, "codes", clip_search=(100, 50)),
    Tier.INT2: TierSpec(2, "codes", clip_search=(100, 50)),
    Tier.DROPPED: TierSpec(0, "dropped", None, ("drop", "none")),
}
#: Every tier, most precise first (more bits per element is more precise; a dropped row last).
BY_PRECISION = tuple(sorted(Tier, key=lambda t: -TIERS[t].bits))

#: The tiers with a scale and bias, in the order of their slots in a v3 group record.
QUANTIZED_TIERS = tuple(t for t in Tier if t.is_quantized)


def _check_dim(dim: int) -> int:
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise FormatError(f"dim must be an integer, got {dim!r}")
    dim = int(dim)
    if not 1 <= dim <= MAX_DIM:
        raise FormatError(f"dim {dim} is outside the supported range 1..{MAX_DIM}")
    return dim


def value_bytes(tier: Any, dim: int) -> int:
    """Bytes of one row's values or codes, without a header: D·bits/8 rounded up (0 for a dropped row)."""
    return -(-_check_dim(dim) * Tier.parse(tier).bits // 8)


def row_bytes(tier: Any, dim: int) -> int:
    """Bytes of one row of ``tier`` *before* padding (FORMAT.md table): 4D, 2D, 4+D, 4+ceil(D/2), 4+ceil(D/4), 0."""
    tier = Tier.parse(tier)
    return value_bytes(tier, dim) + (HEADER_BYTES if tier.is_quantized else 0)


def pack_codes(q: np.ndarray, tier: Tier, out: np.ndarray) -> None:
    """Write codes ``q`` (float64 or uint8 [n, D], values 0..L) into ``out`` (uint8 [n, value_bytes]): element
    per·k + i in bits bits·i .. bits·i + bits-1 of byte k (per = 8 / bits)."""
    n, D = q.shape
    if tier.bits == 8:
        np.copyto(out, q, casting="unsafe")
        return
    per, width = 8 // tier.bits, tier.bits
    padded = np.zeros((n, out.shape[1] * per), dtype=np.uint8)
    np.copyto(padded[:, :D], q, casting="unsafe")
    acc = padded[:, 0::per].copy()
    for i in range(1, per):
        acc |= padded[:, i::per] << (width * i)
    out[...] = acc


def unpack_codes(body: np.ndarray, tier: Tier, dim: int) -> np.ndarray:
    """uint8 [n, D] codes from packed bytes [n, value_bytes] (the inverse of :func:`pack_codes`)."""
    if tier.bits == 8:
        return body[:, :dim]
    per, mask = 8 // tier.bits, (1 << tier.bits) - 1
    q = np.empty((body.shape[0], body.shape[1] * per), dtype=np.uint8)
    for i in range(per):
        q[:, i::per] = (body >> (tier.bits * i)) & mask
    return q[:, :dim]


def decode_values(raw: np.ndarray, tier: Tier, dim: int, scale=None, bias=None) -> np.ndarray:
    """float32 [n, D] of rows of one tier from their value bytes [n, value_bytes]; a quantized tier takes its
    rows' float64 `scale` and `bias` ([n]): value = code · scale + bias."""
    spec = TIERS[tier]
    if spec.kind == "float":
        return raw.view(spec.dtype).astype(np.float32)
    q = unpack_codes(raw, tier, dim)
    return (q.astype(np.float64) * scale[:, None] + bias[:, None]).astype(np.float32)
