"""Criteo (tiny sample): train a DeepFM-style model (26 categorical + 13 dense), convert, check on the held-out split.

    python samples/criteo.py [--data ../shared/data] [--dim 16] [--quant int8|mixed|budget:0.2] [--out out/samples]

The data is read from --data (never copied); see samples/datasets.py for the split and samples/common.py
for the steps. Exit status 0 when faithfulness (atol 1e-5) and the size check pass.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main("criteo", __doc__.splitlines()[0]))
