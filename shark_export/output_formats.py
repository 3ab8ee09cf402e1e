"""The two ways a converted model reads its tables, as one interface the converter uses without asking which:
our custom ops on the stored format (`ops="custom"`), or standard ONNX ops on portable tensors (`ops="standard"`,
shark_export.standard_tables). Each says which passes lower the lookups, which initializers are tables (the rest
are dense weights), and what each table costs in the file."""

from __future__ import annotations

from dataclasses import replace

from .convert_options import Ops
from .lookup_spec import storage_names
from .passes import StandardOpsPass
from .report import TableReport


class CustomOpsOutput:
    """RowwiseDequant* nodes reading each table's payload, row_meta and default_row."""

    ops = Ops.CUSTOM
    fuses_lookups = True  # RowwiseDequantMultiLookup

    def __init__(self, quantized: dict):
        self.quantized = quantized

    def lowering_passes(self) -> list:
        return []

    def table_tensors(self) -> set[str]:
        return {tensor for name in self.quantized for tensor in storage_names(name)}

    def table_reports(self, reports: list[TableReport]) -> list[TableReport]:
        return reports

    def kept_from_dense_int8(self) -> set[str]:
        """Table tensors the dense int8 step must leave alone: the payloads are no MatMul weights."""
        return set()


class StandardOpsOutput:
    """ai.onnx ops on per-tier sub-tables, codes, scales and a slot map (passes.standard_ops)."""

    ops = Ops.STANDARD
    fuses_lookups = False  # the portable lowering reads one field per node

    def __init__(self, quantized: dict):
        self.quantized = quantized
        self.lowering = StandardOpsPass(quantized)

    def lowering_passes(self) -> list:
        return [self.lowering]

    def table_tensors(self) -> set[str]:
        return self.kept_from_dense_int8() | {t for name in self.quantized for t in storage_names(name)}

    def kept_from_dense_int8(self) -> set[str]:
        """The portable tables' tensors (float sub-tables a quantizer could take for weights)."""
        return {name for table in self.lowering.tables_out.values() for name in table.initializers()}

    def table_reports(self, reports: list[TableReport]) -> list[TableReport]:
        """Each table's bytes are those of its portable tensors (values or codes, float16 scale and bias pairs, slot
        map plus default row as metadata), not the stored format's."""
        out = []
        for t in reports:
            portable = self.lowering.tables_out.get(t.table)
            if portable is None or t.pruned:
                out.append(t)
                continue
            b = portable.byte_report()
            layout = "uniform, no slot map" if portable.slots is None else f"{len(portable.parts)} sub-tables + slot map"
            out.append(replace(t, payload_bytes=b.values, scale_bytes=b.scales, metadata_bytes=b.metadata,
                               storage="; ".join(filter(None, [t.storage, f"portable ({layout})"]))))
        return out


def output_format(ops: Ops, quantized: dict) -> CustomOpsOutput | StandardOpsOutput:
    return StandardOpsOutput(quantized) if ops is Ops.STANDARD else CustomOpsOutput(quantized)
