"""Serving needs no torch: `import shark_export` and `shark_export.session()` load neither torch nor the
exporter; the rest of the API is imported on first use."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
from op_models import gather_model

from shark_export.quantize import quantize_table


def test_session_does_not_import_torch(tmp_path):
    table = quantize_table(np.ones((10, 4), np.float32), "int8", name="t")
    onnx.save(gather_model(table), str(tmp_path / "m.onnx"))
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import shark_export
        sess = shark_export.session(sys.argv[1])
        out = sess.run(None, {"indices": np.array([1, 2], np.int64)})[0]
        assert out.shape == (2, 4), out.shape
        heavy = [m for m in ("torch", "onnxscript", "shark_export.converter") if m in sys.modules]
        print(",".join(heavy) or "none")
        shark_export.QuantConfig  # the rest on first use
        print("QuantConfig" if "shark_export.quant_config" in sys.modules else "missing")
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["none", "QuantConfig"]


def test_lazy_names_are_the_real_objects():
    import shark_export
    from shark_export.converter import convert
    from shark_export.format import Tier

    assert shark_export.convert is convert and shark_export.Tier is Tier
    assert set(shark_export.__all__) <= set(dir(shark_export))
