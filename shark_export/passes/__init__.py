"""Graph passes on onnx-ir models, one job each, run in this order by the converter:

1. `lookups.find_lookups` (analysis): staging lookup nodes ↔ tables ↔ fields, weights verified by value.
2. `prune.PruneFieldsPass`: a pruned field's lookup becomes its mean embedding, broadcast to the lookup's shape.
3. `replace_lookups.ReplaceLookupsPass`: staging lookups → our RowwiseDequant* ops on quantized storage.
4. `cleanup.RemoveDeadPass`: drop nodes, initializers, graph inputs and opset imports nothing reads.
5. `finalize.FinalizeVersionsPass`: IR version and opsets ORT reads; no staging node left.
"""

from .cleanup import RemoveDeadPass
from .finalize import FinalizeVersionsPass
from .lookups import Lookup, find_lookups
from .prune import PruneFieldsPass
from .replace_lookups import ReplaceLookupsPass

__all__ = ["Lookup", "find_lookups", "PruneFieldsPass", "ReplaceLookupsPass", "RemoveDeadPass", "FinalizeVersionsPass"]
