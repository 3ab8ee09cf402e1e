"""What a conversion reports: per table (rows, tiers, bytes, storage decisions, dense uses) and per model
(fields, pruning, every byte of the file, the faithfulness and impact checks)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .parity import ParityReport


@dataclass
class TableReport:
    table: str
    rows: int
    dim: int
    tiers: dict[str, int]
    fp32_bytes: int
    payload_bytes: int
    scale_bytes: int = 0
    metadata_bytes: int = 0
    pruned: bool = False
    storage: str = ""  # how the stored tiers differ from the preset's, and why (smaller rows, uniform layout)
    dense_uses: list[str] = field(default_factory=list)  # ops that read the whole table (tied projections)

    @property
    def bytes_after(self) -> int:
        return self.payload_bytes + self.scale_bytes + self.metadata_bytes

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.fp32_bytes


@dataclass
class ConvertReport:
    output_path: str
    tables: list[TableReport]
    pruned_fields: list[str]
    removed_inputs: list[str]
    quant: str
    faithfulness: ParityReport | None = None
    impact: ParityReport | None = None
    fields: list[str] = field(default_factory=list)
    # Every byte the file holds: the tables as stored, the other initializers (dense weights), the rest
    # (graph, attributes, metadata); `file_bytes` is the size on disk, external data included.
    dense_bytes: int = 0
    file_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    merged_fields: dict[str, list[str]] = field(default_factory=dict)  # field → the other calls it stands for
    unused_fields: list[str] = field(default_factory=list)  # called in torch, absent from the exported graph
    fused_lookups: list[list[str]] = field(default_factory=list)  # per RowwiseDequantMultiLookup node, its fields
    dense_rewrites: dict[str, int] = field(default_factory=dict)  # DenseOpsPass: rewrite → how many
    float16_lookups: list[str] = field(default_factory=list)  # lookup nodes writing float16 for Cast(float16) readers
    dense: str = "fp32"  # "int8": MatMul/Gemm through onnxruntime.quantization.quantize_dynamic
    dense_int8_nodes: int = 0  # how many MatMul/Gemm it quantized
    dense_impact: ParityReport | None = None  # the int8-dense file vs the original float model
    ops: str = "custom"  # "standard": ai.onnx ops on portable storage (shark_export.standard_tables)
    # The file's graph inputs and outputs ({"name", "dtype", "shape"}): what a serving call feeds and reads.
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)

    @property
    def fp32_bytes(self) -> int:
        return sum(t.fp32_bytes for t in self.tables)

    @property
    def bytes_after(self) -> int:
        return sum(t.bytes_after for t in self.tables)

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.fp32_bytes if self.fp32_bytes else 0.0

    def __str__(self) -> str:
        header = f"{'table':<32} {'rows':>10} {'dim':>5} {'tiers':<34} {'fp32 B':>12} {'after B':>12} {'ratio':>7}"
        lines = [f"shark-export: {self.output_path} (quant={self.quant}, ops={self.ops})", header, "-" * len(header)]
        for t in self.tables:
            tiers = "pruned" if t.pruned else " ".join(f"{k}:{v}" for k, v in t.tiers.items() if v)
            lines.append(
                f"{t.table:<32} {t.rows:>10} {t.dim:>5} {tiers:<34} {t.fp32_bytes:>12} {t.bytes_after:>12} {t.ratio:>7.2%}"
            )
            if not t.pruned:
                lines.append(f"{'':<32} {'payload':>10} {t.payload_bytes} B, scales {t.scale_bytes} B, metadata {t.metadata_bytes} B")
            if t.storage:
                lines.append(f"{'':<32} {'storage':>10} {t.storage}")
            if t.dense_uses:
                lines.append(f"{'':<32} {'dense use':>10} {', '.join(t.dense_uses)} read the stored table (one copy)")
        lines.append("-" * len(header))
        lines.append(f"{'total':<32} {'':>10} {'':>5} {'':<34} {self.fp32_bytes:>12} {self.bytes_after:>12} {self.ratio:>7.2%}")
        if self.file_bytes:
            other = self.file_bytes - self.bytes_after - self.dense_bytes
            lines.append(
                f"file: {self.file_bytes} B = tables {self.bytes_after} B + other weights {self.dense_bytes} B "
                f"+ graph and metadata {other} B"
            )
        for kind, values in (("inputs", self.inputs), ("outputs", self.outputs)):
            if values:
                lines.append(f"{kind}: " + ", ".join(f"{v['name']} {v['dtype']} [{', '.join(map(str, v['shape'] or ['?']))}]"
                                                     for v in values))
        if self.pruned_fields:
            lines.append(f"pruned fields: {', '.join(self.pruned_fields)}; removed inputs: {', '.join(self.removed_inputs) or 'none'}")
        for name, others in self.merged_fields.items():
            lines.append(f"field {name} also stands for {', '.join(others)} (equal inputs: one lookup)")
        if self.unused_fields:
            lines.append(f"unused fields (no lookup in the exported graph): {', '.join(self.unused_fields)}")
        for group in self.fused_lookups:
            lines.append(f"fused lookups (one node, one output row per sample): {', '.join(group)}")
        if self.float16_lookups:
            lines.append("lookups writing float16 for their float16 readers (Cast removed): " + ", ".join(self.float16_lookups))
        if self.dense_rewrites:
            lines.append("dense ops rewritten for ONNX Runtime: " + ", ".join(f"{k} ({n})" for k, n in self.dense_rewrites.items()))
        lines.extend(f"note: {n}" for n in self.notes)
        if self.faithfulness is not None:
            lines.append("faithfulness (ONNX vs torch with the same pruning and dequantized weights):")
            lines.extend("  " + line for line in str(self.faithfulness).splitlines())
        if self.impact is not None:
            lines.append("impact (ONNX vs the original float model" + (", before the dense int8 step):" if self.dense == "int8" else "):"))
            lines.extend("  " + line for line in str(self.impact).splitlines())
        if self.dense == "int8":
            lines.append(f"dense int8 (onnxruntime.quantization.quantize_dynamic): {self.dense_int8_nodes} MatMul/Gemm quantized")
        if self.dense_impact is not None:
            lines.append("impact of the written file, dense layers in int8 (ONNX vs the original float model):")
            lines.extend("  " + line for line in str(self.dense_impact).splitlines())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = {
            "output_path": self.output_path,
            "quant": self.quant,
            "ops": self.ops,
            "fields": self.fields,
            "pruned_fields": self.pruned_fields,
            "removed_inputs": self.removed_inputs,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "merged_fields": self.merged_fields,
            "unused_fields": self.unused_fields,
            "fused_lookups": self.fused_lookups,
            "dense_rewrites": self.dense_rewrites,
            "float16_lookups": self.float16_lookups,
            "dense": self.dense,
            "dense_int8_nodes": self.dense_int8_nodes,
            "tables": [{**asdict(t), "bytes_after": t.bytes_after, "ratio": t.ratio} for t in self.tables],
            "fp32_bytes": self.fp32_bytes,
            "bytes_after": self.bytes_after,
            "ratio": self.ratio,
            "dense_bytes": self.dense_bytes,
            "file_bytes": self.file_bytes,
            "notes": self.notes,
        }
        for name in ("faithfulness", "impact", "dense_impact"):
            report = getattr(self, name)
            data[name] = None if report is None else json.loads(report.to_json())
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def table_reports(tables: dict, quantized: dict, storage_notes: dict[str, str], dense_uses: dict) -> list[TableReport]:
    """One line per table of the model: its stored bytes, or `pruned` when no lookup reads it any more."""
    from .format import Tier

    reports = []
    for name, table in tables.items():
        if name not in quantized:
            reports.append(TableReport(name, table.num_rows, table.dim, {}, table.num_rows * table.dim * 4, 0, 0, 0, pruned=True))
            continue
        q = quantized[name]
        b = q.byte_report()
        counts = {str(Tier(t)): int(c) for t, c in q.tier_counts.items() if c}
        uses = sorted({f"{user.op_type} {user.name!r}" for user, _ in dense_uses.get(name, [])})
        reports.append(TableReport(name, q.num_rows, q.dim, counts, b.fp32, b.payload, b.scales, b.metadata,
                                   storage=storage_notes.get(name, ""), dense_uses=uses))
    return reports
