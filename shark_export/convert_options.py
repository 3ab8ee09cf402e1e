"""convert()'s options, checked once into one frozen value that the converter's steps read."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError
from .quant_config import QuantConfig
from .streamed_tables import DEFAULT_SHARD_BYTES


class Ops(str, enum.Enum):
    """How the lookups are written: our custom ops, or standard ONNX ops only (a portable model)."""

    CUSTOM = "custom"
    STANDARD = "standard"


class Dense(str, enum.Enum):
    """The dense layers' precision: as trained, or int8 through ONNX Runtime's dynamic quantization."""

    FP32 = "fp32"
    INT8 = "int8"


@dataclass(frozen=True)
class ImpactGoals:
    """What compression may cost against the float model; none given: the impact is measured, never judged."""

    atol: Any = None
    rtol: Any = None
    max_dauc: float | None = None
    max_dlogloss: float | None = None

    def as_impact_kwargs(self) -> dict[str, Any]:
        """The goals as faithfulness.check_converted takes them."""
        return dict(impact_atol=self.atol, impact_rtol=self.rtol, max_dauc=self.max_dauc, max_dlogloss=self.max_dlogloss)

    def as_parity_kwargs(self) -> dict[str, Any]:
        """The goals as parity.check_parity takes them."""
        return dict(atol=self.atol, rtol=self.rtol, max_dauc=self.max_dauc, max_dlogloss=self.max_dlogloss)


@dataclass(frozen=True)
class ConvertOptions:
    """Everything convert() was asked for besides the model, its inputs, the output path and the data."""

    quant: QuantConfig
    prune: Any = None
    goals: ImpactGoals = field(default_factory=ImpactGoals)
    show_progress: bool = False
    keep_unfaithful: bool = False
    fuse_lookups: bool = True
    optimize_dense: bool = True
    dense: Dense = Dense.FP32
    ops: Ops = Ops.CUSTOM
    shard_bytes: int = DEFAULT_SHARD_BYTES

    @classmethod
    def of(cls, *, quant: Any = "int8", prune: Any = None, impact_atol: Any = None, impact_rtol: Any = None,
           max_dauc: float | None = None, max_dlogloss: float | None = None, show_progress: bool = False,
           keep_unfaithful: bool = False, fuse_lookups: bool = True, optimize_dense: bool = True, dense: Any = "fp32",
           ops: Any = "custom", shard_bytes: int = DEFAULT_SHARD_BYTES) -> "ConvertOptions":
        """convert()'s keyword arguments, checked: an unknown `dense` or `ops` is an OptionError naming it."""
        return cls(quant=QuantConfig.of(quant), prune=prune,
                   goals=ImpactGoals(impact_atol, impact_rtol, max_dauc, max_dlogloss), show_progress=bool(show_progress),
                   keep_unfaithful=bool(keep_unfaithful), fuse_lookups=bool(fuse_lookups),
                   optimize_dense=bool(optimize_dense),
                   dense=_choice(Dense, dense, "dense", "fp32 or int8"),
                   ops=_choice(Ops, ops, "ops", "'custom' (our lookup ops) or 'standard' (ai.onnx ops only)"),
                   shard_bytes=shard_bytes)


def _choice(kind: type[enum.Enum], value: Any, name: str, expected: str):
    try:
        return kind(value)
    except ValueError:
        raise OptionError(f"{name}={value!r}: expected {expected}") from None
