"""Graph passes on onnx-ir models, one job each, run in this order by the converter:

0. `tidy.TidyExportPass`: the rewrites we vouch for after the export (metadata, CSE, merging equal lookups).
0b. `exporter_patterns.ExporterPatternsPass`: exporter patterns other runtimes misread (a no-op Slice, 2-D bags
   as Range offsets) → their exact equivalents.
1. `lookups.find_lookups` (analysis): staging lookup nodes ↔ tables ↔ fields (by the module call that
   made each), weights verified by value, dense uses of tables recorded.
2. `prune.PruneFieldsPass`: a pruned field's lookup becomes its mean embedding, broadcast to the lookup's shape.
3. `replace_lookups.ReplaceLookupsPass`: staging lookups → our RowwiseDequant* ops on quantized storage,
   each through the `LookupRewrite` rule (pattern, check, rewrite; every check before any rewrite);
   dense uses read one dequantized view of the same storage.
3b. `group_lookups.GroupLookupsPass`: the lookups feeding one Concat (axis 1) → one RowwiseDequantMultiLookup
   writing every field's rows into one output row per sample (`convert(fuse_lookups=False)` skips it).
3c. `lookup_casts.LookupCastsPass`: a lookup read only through Cast(to=float16) writes float16 itself.
3d. `dense_ops.DenseOpsPass`: cheaper ORT equivalents of the exporter's dense arithmetic (squares and sums of
   squares), measured with ORT's profiler (`convert(optimize_dense=False)` skips it).
4. `cleanup.RemoveDeadPass`: drop nodes, initializers, graph inputs and opset imports nothing reads.
5. `finalize.FinalizeVersionsPass`: IR version and opsets ORT reads; no staging node left.
4b. `standard_ops.StandardOpsPass` (`convert(ops="standard")` only, fusion off): every RowwiseDequant* op →
   ai.onnx ops on portable table storage (shark_export.standard_tables), no custom domain left.
6. `outputs.NameOutputsPass`: graph outputs named after torch's output tree; `outputs.NameDimsPass`: dynamic
   dimensions named `batch` and `<input>_dim<axis>` instead of the exporter's `s92`.

Steps 2-6 run under onnx-ir's `PassManager`; each pass checks its pre- and post-conditions
(`requires` / `ensures`) and reports honestly whether it changed the model.
"""

from .cleanup import RemoveDeadPass
from .dense_ops import DenseOpsPass
from .exporter_patterns import ExporterPatternsPass
from .finalize import FinalizeVersionsPass
from .group_lookups import GroupLookupsPass
from .lookup_casts import LookupCastsPass
from .outputs import NameDimsPass, NameOutputsPass, check_output_count, graph_interface
from .lookups import Lookup, LookupMap, find_lookups, lower_computed_weight_gathers, raise_table_gathers
from .prune import PruneFieldsPass
from .replace_lookups import ReplaceLookupsPass
from .standard_ops import StandardOpsPass
from .tidy import TidyExportPass

__all__ = [
    "Lookup", "LookupMap", "find_lookups", "lower_computed_weight_gathers", "raise_table_gathers", "TidyExportPass",
    "PruneFieldsPass", "ReplaceLookupsPass", "GroupLookupsPass", "LookupCastsPass", "DenseOpsPass", "ExporterPatternsPass", "StandardOpsPass", "RemoveDeadPass", "FinalizeVersionsPass", "NameOutputsPass",
    "NameDimsPass",
    "check_output_count", "graph_interface",
]
