"""Run every zoo case with every preset and write the compatibility table (docs/COMPATIBILITY.md).

    python tests/zoo/make_table.py --out docs/COMPATIBILITY.md

Same checks as the tests (tests/zoo/harness.py); the numbers in the table are what this run measured.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import AUC_BOUND, LIBRARY_MODULES, PRESETS, SIZE_BOUND, build, load_library, run  # noqa: E402


def _fmt_auc(deltas: dict) -> str:
    return ", ".join(f"{d:+.5f}" for d in deltas.values()) if deltas else "—"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/COMPATIBILITY.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows, missing = [], []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for module in LIBRARY_MODULES:
            lib, why = load_library(module)
            if lib is None:
                missing.append(why)
                continue
            for name in lib.CASES:
                case = build(module, name, args.seed)
                outcomes = {preset: run(case, preset, Path(tmp)) for preset in PRESETS}
                rows.append((case, outcomes))
                print(name, {p: o.passed for p, o in outcomes.items()}, flush=True)
    import shark_export
    import torch

    lines = [
        "# Compatibility: models built with the public recommender libraries",
        "",
        "Every row is a model built through its library's public API (the way the library's examples build it),",
        "trained briefly on generated data with a planted signal, then converted with `fp32`, `int8` and `mixed`",
        "(calibration data and labels given) and checked:",
        "",
        "- **faithful**: ONNX against torch with the same dequantized weights, atol 1e-5 (every output);",
        f"- **size**: stored table bytes ≤ {SIZE_BOUND['int8']}× Σ rows·(min(D + 4, 2·D) + 1) for `int8`, "
        f"≤ {SIZE_BOUND['mixed']}× that for `mixed`, never above the fp32 tables;",
        f"- **ΔAUC** on held-out batches of another batch size: `int8` ≤ {AUC_BOUND['int8']}, `mixed` ≤ "
        f"{AUC_BOUND['mixed']} (one value per task; per output for multi-output models).",
        "",
        "The cases live in `tests/zoo/lib_*.py`; `pytest tests/zoo` runs the same checks. Regenerate this page with",
        "`python tests/zoo/make_table.py --out docs/COMPATIBILITY.md`.",
        "",
        "| model | library | kind | status | int8 size (limit) | mixed size (limit) | int8 ΔAUC | mixed ΔAUC | file / plain fp32 (int8) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, outcomes in rows:
        failed = [p for p, o in outcomes.items() if not o.passed]
        status = "✓ fp32 int8 mixed" if not failed else "✗ " + ", ".join(
            f"{p}: {outcomes[p].error or ('size' if not outcomes[p].size_ok else 'faithfulness' if not outcomes[p].faithful else 'ΔAUC')}"
            for p in failed
        )
        i8, mx = outcomes["int8"], outcomes["mixed"]
        lines.append(
            f"| {case.name} | {case.library} | {case.kind} | {status} | {i8.ratio:.1%} ({i8.size_limit_ratio:.1%}) | "
            f"{mx.ratio:.1%} ({mx.size_limit_ratio:.1%}) | {_fmt_auc(i8.auc_deltas)} | {_fmt_auc(mx.auc_deltas)} | "
            f"{i8.file_vs_plain:.2f} | {case.notes.replace('|', '/')} |"
        )
    passed = sum(all(o.passed for o in outcomes.values()) for _, outcomes in rows)
    libraries = sorted({case.library for case, _ in rows})
    lines += [
        "",
        f"{passed} of {len(rows)} models pass every check with every preset, across {len(libraries)} libraries "
        f"({', '.join(libraries)}).",
        "Sizes are the embedding tables as stored, as a fraction of their fp32 bytes; the limit is the size bound above",
        "for that model. *file / plain fp32* is the whole `int8` file against the same file with the tables in fp32 (other",
        "weights, graph and metadata unchanged): what the conversion saves on the whole file.",
        "",
        f"Measured with shark-export {shark_export.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"in {time.time() - start:.0f} s on {platform.machine()}.",
    ]
    if missing:
        lines += ["", "Not run (library not installed): " + "; ".join(missing)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {passed}/{len(rows)} pass")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
