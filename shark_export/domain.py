"""The custom-op domain and the names of its ops: what the converter writes, the library registers and every
reader looks for. A leaf module: it imports nothing of the package, so any module may import it."""

#: ONNX domain of the custom ops, opset version DOMAIN_VERSION.
DOMAIN = "shark_export"
DOMAIN_VERSION = 1

GATHER_OP = "RowwiseDequantGather"
BAG_OP = "RowwiseDequantEmbeddingBag"
MULTI_OP = "RowwiseDequantMultiLookup"
