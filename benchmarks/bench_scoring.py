"""Scoring benchmark: SHARK's F-Permutation (field pruning) and F-Quantization (row priorities) on real data.

    python benchmarks/bench_scoring.py --data /work/shared/data [--datasets movielens,frappe] [--seeds 3]
        [--out benchmarks/figures] [--quick]

For each dataset (MovieLens-1M partial, Frappe; loaders in samples/datasets.py, used read-only) a DeepFM-style
model (shark_export.example_models.DeepFM, D=64 by default) is trained on the train split. The held-out split is
cut at random (fixed seed) into two halves: *calibration* (field scores, mean embeddings) and *evaluation*
(every AUC reported). Then:

1. Field scores by `taylor`, exact `permutation` (--repeats shuffles) and `norm` on the calibration half;
   Spearman ρ between methods; wall-time ratio permutation / taylor (same batches, same torch thread count,
   best of --timing-rounds runs each).
2. Prune the k lowest fields, k = 1..floor(n/2), ranked by taylor, permutation, norm, or at random (--seeds
   draws): evaluation AUC of `prune_fields(model, plan, calibration)` without fine-tuning and after a short
   fine-tune (--ft-epochs epochs over the train split, the training optimizer: Adam + SparseAdam, same lr).
   Reference: the unpruned model fine-tuned the same way (--seeds fine-tune seeds), the noise floor.
3. Row priorities at equal embedding bytes: QuantConfig(preset="int4", target_ratio=r) with assign_tiers,
   quantize_table and reference.dequantize; the dequantized torch model's evaluation AUC. Priorities from the
   train split: F-Quantization (count, pos:neg = 2:1, decay < 1 over time-ordered batches where the data has
   time), frequency only (1:1, no decay), taylor row scores, and random priorities (control); plus uniform
   int4 / int8 tables. Bytes are those of the stored tables (QuantizedTable.byte_report: payload, scales,
   row_meta, default row) over the fp32 tables.

Everything the RESULTS file reports is printed, written as markdown tables (bench_scoring_tables.md), as JSON
(bench_scoring.json) and as PNG curves in --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "samples"))

import datasets  # noqa: E402  (samples/datasets.py, read-only)

from shark_export.example_models import DeepFM, predict, split_batches, train  # noqa: E402
from shark_export.field_scoring import score_fields  # noqa: E402
from shark_export.fields import find_tables  # noqa: E402
from shark_export.format import Tier, row_stride  # noqa: E402
from shark_export.quantize import quantize_table  # noqa: E402
from shark_export.metrics import auc  # noqa: E402
from shark_export.pruning import prune_fields  # noqa: E402
from shark_export.quant_config import QuantConfig, assign_tiers  # noqa: E402
from shark_export.reference import dequantize  # noqa: E402
from shark_export.row_priority import score_rows  # noqa: E402

# Training defaults per dataset (the same as samples/common.py's TRAIN_DEFAULTS).
TRAIN = {
    "movielens": dict(epochs=2, batch_size=1024, lr=3e-3),
    "frappe": dict(epochs=4, batch_size=512, lr=3e-3),
}
EVAL_BATCH = 4096
SPLIT_SEED = 1234  # calibration / evaluation halves of the held-out split
RATIOS = (0.15, 0.175, 0.20, 0.235, 0.27)
HEADLINE_RATIOS = (0.15, 0.20, 0.27)
LOW_RATIOS = (0.03, 0.05, 0.07, 0.10, 0.125)
LOW_LADDER = ("dropped", "int2", "int4", "int8")
POS_WEIGHT, NEG_WEIGHT = 2.0, 1.0
OLDEST_WEIGHT = 0.1  # decay per batch chosen so that the oldest calibration batch weighs 0.1 of the newest


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def batches(columns: dict, labels: np.ndarray, fields, size: int):
    pairs = list(split_batches(columns, labels, fields, size))
    return [b for b, _ in pairs], [y for _, y in pairs]


def take(columns: dict, idx: np.ndarray) -> dict:
    out = {}
    for k, v in columns.items():
        out[k] = [v[i] for i in idx] if isinstance(v, list) else v[idx]
    return out


def movielens_train_timestamps(ds, data_root, max_train: int | None) -> np.ndarray | None:
    """Unix timestamps of the train rows in the loader's (shuffled) order, or None when they cannot be recovered.

    samples/datasets.py does not keep timestamps, so the loader's user-time split and its seeded shuffle are
    replayed here on the raw ratings, and the result is verified against the loaded user_id and movie_id columns
    (train vocabularies are the sorted raw ids): a mismatch returns None and the benchmark uses no decay.
    """
    try:
        folder = datasets.dataset_dir("movielens", data_root)
        ratings = datasets._parse_ints(datasets._read_text(folder / "ratings.dat.gz").replace("::", " "), 4)
        user, movie, _rating, ts = ratings.T
        order = np.lexsort((movie, ts, user))
        su = user[order]
        starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
        counts = np.diff(np.r_[starts, len(order)])
        rank = np.arange(len(order)) - np.repeat(starts, counts)
        n_test = np.maximum(1, np.round(counts * 0.2).astype(np.int64))
        is_test = rank >= np.repeat(counts - n_test, counts)
        train_idx = order[~is_test]
        train_idx = train_idx[np.random.default_rng(0).permutation(len(train_idx))]
        if max_train is not None:
            train_idx = train_idx[:max_train]
        for name, raw in (("user_id", user), ("movie_id", movie)):
            vocab, inverse = np.unique(raw[train_idx], return_inverse=True)
            if not np.array_equal(inverse + 1, ds.train_columns[name]):
                return None
        return ts[train_idx]
    except Exception as exc:  # noqa: BLE001 - any drift in the loader: fall back to no decay
        log(f"  (could not recover MovieLens timestamps: {exc})")
        return None


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def evaluate(model, eval_batches, eval_labels) -> float:
    return auc(eval_labels, predict(model, eval_batches))


def calibration_loss(model, cal_b, cal_y) -> float:
    """Mean binary cross-entropy over the calibration batches."""
    with torch.no_grad():
        total = sum(float(torch.nn.functional.binary_cross_entropy_with_logits(model(b), y.float(), reduction="sum"))
                    for b, y in zip(cal_b, cal_y))
    return total / sum(len(y) for y in cal_y)


def low_budget_tiers(tables: dict, priorities: dict, ratio: float, ladder=LOW_LADDER) -> dict:
    """Tiers for budgets below the int4 floor: the product's budget (QuantConfig target_ratio, the same code
    convert runs) over the ladder dropped → int2 → int4 → int8."""
    return assign_tiers(QuantConfig(target_ratio=ratio, ladder=ladder), tables, priorities)


def short(name: str) -> str:
    return name.split(".", 1)[1] if name.startswith("embeddings.") else name


def fine_tune(model, train_b, train_y, cfg, epochs: int, seed: int):
    torch.manual_seed(seed)
    return train(model, train_b, train_y, epochs=epochs, lr=cfg["lr"], seed=seed)


def mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt_ms(values) -> str:
    m, s = mean_std(values)
    return f"{m:.4f} ± {s:.4f}" if len(values) > 1 else f"{m:.4f}"


def quantized_copy(model, tiers_of: dict) -> tuple[torch.nn.Module, int, int, dict]:
    """The model with every table replaced by its dequantized stored values; (copy, bytes, fp32 bytes, tier counts)."""
    q = copy.deepcopy(model)
    params = dict(q.named_parameters())
    total = fp32 = 0
    counts: dict[str, int] = {}
    with torch.no_grad():
        for name, tiers in tiers_of.items():
            weight = params[name].detach().numpy()
            default = None
            if not isinstance(tiers, (int, Tier)) and (np.asarray(tiers) == Tier.DROPPED).any():
                default = weight[np.asarray(tiers) == Tier.DROPPED].mean(0)  # as convert does for drop_unseen
            table = quantize_table(weight, tiers, name=name, default_row=default)
            report = table.byte_report()
            total += report.total
            fp32 += report.fp32
            for t, c in table.tier_counts.items():
                if c:
                    counts[str(t)] = counts.get(str(t), 0) + int(c)
            params[name].copy_(torch.from_numpy(dequantize(table)))
    return q.eval(), total, fp32, counts


# --------------------------------------------------------------------------------------------------
# one dataset
# --------------------------------------------------------------------------------------------------


def run_dataset(name: str, args) -> dict:
    cfg = dict(TRAIN[name])
    t0 = time.perf_counter()
    kwargs = dict(max_train=10000, max_test=5000) if args.quick else {}
    ds = datasets.load(name, args.data, **kwargs)
    log(ds.describe())
    res: dict = {"dataset": ds.name, "split": ds.split, "dim": args.dim, "train_rows": int(len(ds.train_labels)),
                 "heldout_rows": int(len(ds.test_labels)), "train": cfg}

    # held-out split -> calibration half / evaluation half
    n = len(ds.test_labels)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    cal_idx, ev_idx = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
    cal_b, cal_y = batches(take(ds.test_columns, cal_idx), ds.test_labels[cal_idx], ds.fields, EVAL_BATCH)
    ev_b, _ = batches(take(ds.test_columns, ev_idx), ds.test_labels[ev_idx], ds.fields, EVAL_BATCH)
    ev_y = ds.test_labels[ev_idx]
    res["calibration_rows"], res["evaluation_rows"] = int(len(cal_idx)), int(len(ev_idx))

    # train
    torch.manual_seed(0)
    train_b, train_y = batches(ds.train_columns, ds.train_labels, ds.fields, cfg["batch_size"])
    model = DeepFM(ds.fields, dim=args.dim, hidden=(64, 32))
    t = time.perf_counter()
    train(model, train_b, train_y, epochs=cfg["epochs"], lr=cfg["lr"], seed=0)
    res["train_seconds"] = time.perf_counter() - t
    base_auc = evaluate(model, ev_b, ev_y)
    res["base_auc"] = base_auc
    log(f"  trained DeepFM D={args.dim} ({cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']}) "
        f"in {res['train_seconds']:.1f} s; evaluation AUC {base_auc:.4f}")

    # ---- 1. field scores ---------------------------------------------------------------------------------
    scores = {}
    methods = ("ablation", "taylor", "permutation", "norm")
    times = {m: [] for m in methods}
    cpu_times = {m: [] for m in methods}
    for _ in range(args.timing_rounds):  # rounds interleave the methods, so drifting load hits all of them
        for method in methods:
            t, c = time.perf_counter(), time.process_time()
            s = score_fields(model, cal_b, cal_y, method=method, repeats=args.repeats, seed=0)
            times[method].append(time.perf_counter() - t)
            cpu_times[method].append(time.process_time() - c)
            scores[method] = s
    fields = list(scores["taylor"].scores)
    vec = {m: np.array([scores[m].scores[f] for f in fields]) for m in scores}
    rho = {
        "ablation_vs_permutation": float(spearmanr(vec["ablation"], vec["permutation"]).statistic),
        "taylor_vs_permutation": float(spearmanr(vec["taylor"], vec["permutation"]).statistic),
        "norm_vs_permutation": float(spearmanr(vec["norm"], vec["permutation"]).statistic),
        "taylor_vs_norm": float(spearmanr(vec["taylor"], vec["norm"]).statistic),
    }
    # exact mean-replacement ablation (what taylor approximates to first order): loss increase on the calibration
    # half when one field reads its mean embedding, one prune_fields copy per field
    base_loss = calibration_loss(model, cal_b, cal_y)
    ablation = {f: calibration_loss(prune_fields(model, scores["taylor"].plan(drop=[f]), cal_b), cal_b, cal_y) - base_loss
                for f in fields}
    vec["ablation_pruned"] = np.array([ablation[f] for f in fields])
    # the product's ablation method against this independent one (a pruned copy per field): the same numbers
    res["ablation_max_rel_diff"] = float(np.max(np.abs(vec["ablation"] - vec["ablation_pruned"]) / np.maximum(np.abs(vec["ablation_pruned"]), 1e-12)))
    vec["ablation"] = vec["ablation_pruned"]
    rho["taylor_vs_ablation"] = float(spearmanr(vec["taylor"], vec["ablation"]).statistic)
    rho["permutation_vs_ablation"] = float(spearmanr(vec["permutation"], vec["ablation"]).statistic)
    rho["norm_vs_ablation"] = float(spearmanr(vec["norm"], vec["ablation"]).statistic)
    # permutation noise: a second exact run with another shuffle seed, ρ against the first
    perm2 = score_fields(model, cal_b, cal_y, method="permutation", repeats=args.repeats, seed=1)
    rho["permutation_seed0_vs_seed1"] = float(spearmanr(vec["permutation"], [perm2.scores[f] for f in fields]).statistic)
    best = {m: min(v) for m, v in times.items()}
    res["field_scores"] = {m: {short(f): float(scores[m].scores[f]) for f in fields} for m in scores}
    res["field_scores"]["permutation_seed1"] = {short(f): float(perm2.scores[f]) for f in fields}
    res["field_scores"]["ablation_pruned"] = {short(f): float(ablation[f]) for f in fields}
    res["spearman"] = rho
    res["score_seconds"] = {m: v for m, v in times.items()}
    res["score_seconds_best"] = best
    res["compute_ratio_perm_over_taylor"] = best["permutation"] / best["taylor"]
    res["score_cpu_seconds"] = cpu_times
    best_cpu = {m: min(v) for m, v in cpu_times.items()}
    res["score_cpu_seconds_best"] = best_cpu
    res["cpu_ratio_perm_over_taylor"] = best_cpu["permutation"] / best_cpu["taylor"]
    res["cost_ablation_over_perm"] = best["ablation"] / best["permutation"]
    log(f"  field scores: ρ(ablation, permutation) = {rho['ablation_vs_permutation']:.3f} at "
        f"{res['cost_ablation_over_perm']:.2f}x permutation's time; ρ(taylor, permutation) = {rho['taylor_vs_permutation']:.3f}, "
        f"ρ(norm, permutation) = {rho['norm_vs_permutation']:.3f}; time taylor {best['taylor']:.3f} s, "
        f"permutation (repeats {args.repeats}) {best['permutation']:.3f} s -> ratio {res['compute_ratio_perm_over_taylor']:.1f}x "
        f"(CPU time ratio {res['cpu_ratio_perm_over_taylor']:.1f}x)")

    # ---- 2. pruning --------------------------------------------------------------------------------------
    n_fields = len(fields)
    ks = list(range(1, n_fields // 2 + 1))
    ranked = {m: [f for f, _ in sorted(scores[m].scores.items(), key=lambda kv: kv[1])] for m in scores}  # lowest first
    orders = [(m, 0, ranked[m]) for m in ("taylor", "permutation", "norm")]
    for s in range(args.seeds):
        orders.append(("random", s, list(np.random.default_rng(100 + s).permutation(fields))))
    plan_source = scores["taylor"]  # every plan takes its mean embeddings from the calibration half
    prune: dict = {m: {k: {"no_ft": [], "ft": [], "dropped": []} for k in ks} for m in ("taylor", "permutation", "norm", "random")}
    t = time.perf_counter()
    for method, seed, order in orders:
        for k in ks:
            drop = order[:k]
            pruned = prune_fields(model, plan_source.plan(drop=drop), cal_b)
            entry = prune[method][k]
            entry["dropped"].append([short(f) for f in drop])
            entry["no_ft"].append(evaluate(pruned, ev_b, ev_y))
            ft_seeds = [seed] if method == "random" else range(args.ft_seeds)
            for fs in ft_seeds:
                tuned = fine_tune(copy.deepcopy(pruned), train_b, train_y, cfg, args.ft_epochs, seed=1000 + fs)
                entry["ft"].append(evaluate(tuned, ev_b, ev_y))
    baseline_ft = [evaluate(fine_tune(copy.deepcopy(model), train_b, train_y, cfg, args.ft_epochs, seed=1000 + s), ev_b, ev_y)
                   for s in range(max(args.seeds, args.ft_seeds))]
    res["prune_seconds"] = time.perf_counter() - t
    res["prune"] = {m: {str(k): v for k, v in d.items()} for m, d in prune.items()}
    res["baseline_ft"] = baseline_ft
    log(f"  pruning: {len(orders)} orders x {len(ks)} k in {res['prune_seconds']:.1f} s")

    # ---- 3. row priorities at equal bytes ----------------------------------------------------------------
    t = time.perf_counter()
    tables = find_tables(model)
    ts = movielens_train_timestamps(ds, args.data, kwargs.get("max_train")) if name == "movielens" else None
    if ts is not None:
        order = np.argsort(ts, kind="stable")
        prio_b, prio_y = batches(take(ds.train_columns, order), ds.train_labels[order], ds.fields, EVAL_BATCH)
        decay = float(OLDEST_WEIGHT ** (1.0 / max(1, len(prio_b) - 1)))
        time_note = (f"train split sorted by rating timestamp, {len(prio_b)} batches of {EVAL_BATCH}; "
                     f"decay {decay:.5f} per batch (oldest batch weighs {OLDEST_WEIGHT} of the newest)")
    else:
        prio_b, prio_y = batches(ds.train_columns, ds.train_labels, ds.fields, EVAL_BATCH)
        decay = 1.0
        time_note = (f"train split in file order ({len(prio_b)} batches of {EVAL_BATCH}); the data has no timestamps, "
                     "so no decay (decay = 1): F-Quantization here is the label weighting alone")
    priorities = {
        "fquant": score_rows(model, prio_b, prio_y, pos_weight=POS_WEIGHT, neg_weight=NEG_WEIGHT, decay=decay).scores,
        "frequency": score_rows(model, prio_b, prio_y, pos_weight=1.0, neg_weight=1.0, decay=1.0).scores,
        "taylor_rows": score_rows(model, prio_b, prio_y, method="taylor").scores,
    }
    rng = np.random.default_rng(7)
    priorities["random"] = {name_: rng.random(tables[name_].num_rows).astype(np.float32) for name_ in tables}
    # agreement of the two count priorities (rank correlation over all rows)
    cat = {k: np.concatenate([v[tn] for tn in tables]) for k, v in priorities.items()}
    res["priority_spearman_fquant_vs_frequency"] = float(spearmanr(cat["fquant"], cat["frequency"]).statistic)
    quant: dict = {"time_order": time_note, "decay": decay, "pos_weight": POS_WEIGHT, "neg_weight": NEG_WEIGHT,
                   "budget": {}, "uniform": {}}
    for ratio in RATIOS:
        config = QuantConfig(preset="int4", target_ratio=ratio, ladder=("int4", "int8", "fp16", "fp32"))
        for pname, prio in priorities.items():
            tiers = assign_tiers(config, tables, prio)
            q, nbytes, fp32, counts = quantized_copy(model, tiers)
            quant["budget"].setdefault(pname, []).append(
                {"target": ratio, "ratio": nbytes / fp32, "auc": evaluate(q, ev_b, ev_y), "tiers": counts})
    for ratio in LOW_RATIOS:
        for pname, prio in priorities.items():
            q, nbytes, fp32, counts = quantized_copy(model, low_budget_tiers(tables, prio, ratio))
            quant.setdefault("low_budget", {}).setdefault(pname, []).append(
                {"target": ratio, "ratio": nbytes / fp32, "auc": evaluate(q, ev_b, ev_y), "tiers": counts})
    for tier in (Tier.INT2, Tier.INT4, Tier.INT8, Tier.FP16):
        q, nbytes, fp32, counts = quantized_copy(model, {tn: tier for tn in tables})
        quant["uniform"][str(tier)] = {"ratio": nbytes / fp32, "auc": evaluate(q, ev_b, ev_y)}
    quant["fp32_bytes"] = int(sum(t_.num_rows * t_.dim * 4 for t_ in tables.values()))
    quant["strides"] = {str(t_): row_stride(t_, args.dim) for t_ in (Tier.FP32, Tier.FP16, Tier.INT8, Tier.INT4)}
    res["quant"] = quant
    res["quant_seconds"] = time.perf_counter() - t
    res["seconds"] = time.perf_counter() - t0
    log(f"  row priorities and quantization in {res['quant_seconds']:.1f} s; dataset total {res['seconds']:.1f} s")
    return res


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------

PRUNE_METHODS = ("taylor", "permutation", "norm", "random")
PRIO_LABELS = {"fquant": "F-Quantization (2:1, decay)", "frequency": "frequency (1:1, no decay)",
               "taylor_rows": "taylor rows", "random": "random priority"}


def tables_markdown(results: list[dict], args) -> str:
    out = []
    for r in results:
        out.append(f"### {r['dataset']} (D={r['dim']})\n")
        out.append(f"Train {r['train_rows']} rows; held-out {r['heldout_rows']} rows → calibration {r['calibration_rows']} / "
                   f"evaluation {r['evaluation_rows']}. Split: {r['split']}. Trained {r['train']['epochs']} epochs, "
                   f"batch {r['train']['batch_size']}, lr {r['train']['lr']} in {r['train_seconds']:.1f} s. "
                   f"Evaluation AUC of the float model: **{r['base_auc']:.4f}**.\n")
        # 1. field scores
        rho = r["spearman"]
        fs = r["field_scores"]
        out.append("**Field scores** (calibration half; higher = more important)\n")
        out.append("| field | ablation (default) | taylor | permutation (seed 0) | permutation (seed 1) | norm |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for f in sorted(fs["permutation"], key=lambda x: -fs["permutation"][x]):
            out.append(f"| {f} | {fs['ablation'][f]:.4g} | {fs['taylor'][f]:.4g} | {fs['permutation'][f]:.4g} | "
                       f"{fs['permutation_seed1'][f]:.4g} | {fs['norm'][f]:.4g} |")
        b = r["score_seconds_best"]
        bc = r["score_cpu_seconds_best"]
        out.append("")
        out.append(f"Spearman ρ against permutation: **ablation {rho['ablation_vs_permutation']:.3f}** (at "
                   f"{r['cost_ablation_over_perm']:.2f}× permutation's wall time; it equals an independent pruned-copy "
                   f"ablation within {r['ablation_max_rel_diff']:.1e} relative), ")
        out.append(f"taylor vs permutation **{rho['taylor_vs_permutation']:.3f}**, norm vs permutation "
                   f"{rho['norm_vs_permutation']:.3f}, taylor vs norm {rho['taylor_vs_norm']:.3f}; permutation seed 0 vs "
                   f"seed 1 (noise of the exact method) {rho['permutation_seed0_vs_seed1']:.3f}. Against the exact mean "
                   f"ablation (loss increase when the field reads its mean embedding, what taylor linearizes): taylor "
                   f"{rho['taylor_vs_ablation']:.3f}, permutation {rho['permutation_vs_ablation']:.3f}, norm {rho['norm_vs_ablation']:.3f}.  ")
        out.append(f"Wall time (best of {args.timing_rounds}, {args.threads} torch thread(s), same batches): ablation "
                   f"{b['ablation']:.3f} s, taylor {b['taylor']:.3f} s, permutation ({args.repeats} repeats) {b['permutation']:.3f} s, norm {b['norm']:.3f} s "
                   f"→ permutation / taylor = **{r['compute_ratio_perm_over_taylor']:.1f}×**; process CPU time (best of "
                   f"{args.timing_rounds}): taylor {bc['taylor']:.3f} s, permutation {bc['permutation']:.3f} s, norm "
                   f"{bc['norm']:.3f} s → **{r['cpu_ratio_perm_over_taylor']:.1f}×**.\n")
        # 2. pruning
        ks = sorted(int(k) for k in r["prune"]["taylor"])
        base_ft = r["baseline_ft"]
        out.append(f"**Pruning** (evaluation AUC; k lowest fields replaced by their mean; fine-tune = {args.ft_epochs} epoch(s) "
                   f"of the pruned copy with the training optimizer; random = mean ± std over {args.seeds} draws; "
                   f"taylor/permutation/norm fine-tuned with {args.ft_seeds} seed(s)). Unpruned: {r['base_auc']:.4f}; "
                   f"unpruned + same fine-tune: {fmt_ms(base_ft)}.\n")
        out.append("| k | fields dropped (taylor) | taylor | permutation | norm | random | taylor +FT | permutation +FT | norm +FT | random +FT |")
        out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in ks:
            row = [str(k), ", ".join(r["prune"]["taylor"][str(k)]["dropped"][0])]
            row += [fmt_ms(r["prune"][m][str(k)]["no_ft"]) for m in PRUNE_METHODS]
            row += [fmt_ms(r["prune"][m][str(k)]["ft"]) for m in PRUNE_METHODS]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        out.append("Dropped sets: " + "; ".join(
            f"{m}: " + " → ".join(r["prune"][m][str(ks[-1])]["dropped"][0]) for m in ("permutation", "norm")) + ".\n")
        # 3. quantization
        qd = r["quant"]
        out.append(f"**Row priorities at equal embedding bytes** (ladder int4 → int8 → fp16 → fp32; bytes = stored "
                   f"tables incl. scales, row_meta and default row, over fp32). Priority data: {qd['time_order']}. "
                   f"Spearman ρ(F-Quantization, frequency) over all rows: {r['priority_spearman_fquant_vs_frequency']:.3f}. "
                   f"Row strides at D={r['dim']}: " + ", ".join(f"{k} {v} B" for k, v in qd["strides"].items()) + ".\n")
        uniform = {k: v for k, v in qd["uniform"].items() if k in ("int4", "int8")}
        out.append("| target | " + " | ".join(PRIO_LABELS[p] for p in qd["budget"]) + " | closest uniform |")
        out.append("|---:|" + "---:|" * (len(qd["budget"]) + 1))
        for i, ratio in enumerate(RATIOS):
            cells = []
            for p in qd["budget"]:
                e = qd["budget"][p][i]
                cells.append(f"{e['auc']:.4f} ({e['ratio']:.2%})")
            tier, v = min(uniform.items(), key=lambda kv: abs(kv[1]["ratio"] - ratio))
            cells.append(f"{tier} {v['auc']:.4f} ({v['ratio']:.2%})")
            mark = "**" if ratio in HEADLINE_RATIOS else ""
            out.append(f"| {mark}{ratio:.1%}{mark} | " + " | ".join(cells) + " |")
        out.append("")
        tiers = qd["budget"]["fquant"]
        out.append("Tier mix of the F-Quantization tables: " + "; ".join(
            f"{e['target']:.1%}: " + ", ".join(f"{k} {v}" for k, v in sorted(e["tiers"].items())) for e in tiers) + ".  ")
        out.append("Uniform precision (every row one tier): " + ", ".join(
            f"{k} {v['auc']:.4f} at {v['ratio']:.2%}" for k, v in qd["uniform"].items()) + f"; fp32 {r['base_auc']:.4f} at 100%.\n")
        low = qd["low_budget"]
        out.append("Below the int4 floor (QuantConfig target_ratio over the ladder dropped → int2 → int4 → int8, as "
                   "convert --budget does; dropped rows read the mean of the table's dropped rows):\n")
        out.append("| target | " + " | ".join(PRIO_LABELS[p] for p in low) + " |")
        out.append("|---:|" + "---:|" * len(low))
        for i, ratio in enumerate(LOW_RATIOS):
            out.append(f"| {ratio:.1%} | " + " | ".join(f"{low[p][i]['auc']:.4f} ({low[p][i]['ratio']:.2%})" for p in low) + " |")
        out.append("")
        out.append("Tier mix (F-Quantization): " + "; ".join(
            f"{e['target']:.1%}: " + ", ".join(f"{k} {v}" for k, v in sorted(e["tiers"].items())) for e in low["fquant"]) + ".\n")
    return "\n".join(out)


def plots(results: list[dict], out: Path, suffix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"taylor": "#1f77b4", "permutation": "#2ca02c", "norm": "#d62728", "random": "#7f7f7f",
              "fquant": "#1f77b4", "frequency": "#ff7f0e", "taylor_rows": "#2ca02c"}
    paths = []
    # pruning: one row per dataset, columns without / with fine-tune
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.6 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        ks = sorted(int(k) for k in r["prune"]["taylor"])
        for ax, key, title in ((row[0], "no_ft", "no fine-tune"), (row[1], "ft", "after fine-tune")):
            # the y-range follows the ranked methods; random draws that drop a key field leave the axis
            ranked_values = [r["base_auc"]] + [v for m in PRUNE_METHODS[:3] for k in ks for v in r["prune"][m][str(k)][key]]
            if key == "ft":
                ranked_values += list(r["baseline_ft"])
            lo, hi = min(ranked_values), max(ranked_values)
            pad = max(0.002, 0.15 * (hi - lo))
            for m in PRUNE_METHODS:
                stats = [mean_std(r["prune"][m][str(k)][key]) for k in ks]
                mu = np.array([s[0] for s in stats])
                sd = np.array([s[1] for s in stats])
                label = f"random (mean ± std of {len(r['prune'][m][str(ks[0])][key])})" if m == "random" else m
                ax.plot([0] + ks, [r["base_auc"]] + list(mu), marker="o", ms=4, color=colors[m], label=label)
                if m == "random":
                    ax.fill_between(ks, mu - sd, mu + sd, color=colors[m], alpha=0.2)
            if key == "ft":
                m, s = mean_std(r["baseline_ft"])
                ax.axhspan(m - s, m + s, color="k", alpha=0.08)
                ax.axhline(m, color="k", lw=0.8, ls="--", label="unpruned + fine-tune")
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_title(f"{r['dataset']}: {title}")
            ax.set_xlabel("fields pruned (k lowest)")
            ax.set_ylabel("evaluation AUC")
            ax.set_xticks([0] + ks)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / f"scoring_prune_auc{suffix}.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(str(p))
    # size vs AUC: top row the QuantConfig budgets (15-27%), bottom row the low budgets (ladder from dropped)
    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 7.4), squeeze=False)
    for col, r in enumerate(results):
        qd = r["quant"]
        for ax, key, lo, hi, what in ((axes[0][col], "budget", 0.13, 0.30, "QuantConfig target_ratio, int4→int8→fp16→fp32"),
                                      (axes[1][col], "low_budget", 0.0, 0.15, "QuantConfig target_ratio, dropped→int2→int4→int8")):
            for pname, entries in qd[key].items():
                ax.plot([100 * e["ratio"] for e in entries], [e["auc"] for e in entries], marker="o", ms=4,
                        color=colors.get(pname, "#7f7f7f"), ls=":" if pname == "random" else "-", label=PRIO_LABELS[pname])
            for tier, v in qd["uniform"].items():
                if lo <= v["ratio"] <= hi:
                    ax.scatter([100 * v["ratio"]], [v["auc"]], marker="s", color="k", zorder=3)
                    ax.annotate(f"uniform {tier}", (100 * v["ratio"], v["auc"]), fontsize=8, xytext=(4, -10), textcoords="offset points")
            ax.axhline(r["base_auc"], color="k", lw=0.8, ls="--", label="fp32")
            if key == "budget":  # at least 0.002 AUC of y-range, so that differences of 1e-4 do not look like signal
                y0, y1 = ax.get_ylim()
                if y1 - y0 < 0.002:
                    c = 0.5 * (y0 + y1)
                    ax.set_ylim(c - 0.001, c + 0.001)
            ax.set_title(f"{r['dataset']} (D={r['dim']}): {what}", fontsize=9)
            ax.set_xlabel("embedding bytes, % of fp32")
            ax.set_ylabel("evaluation AUC")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / f"scoring_quant_auc{suffix}.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(str(p))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=datasets.DEFAULT_DATA_ROOT, help="folder holding the dataset folders")
    p.add_argument("--datasets", default="movielens,frappe")
    p.add_argument("--seeds", type=int, default=3, help="random pruning draws (each fine-tuned once) and unpruned fine-tune seeds")
    p.add_argument("--ft-seeds", type=int, default=1, help="fine-tune seeds of the taylor/permutation/norm pruned copies")
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="shuffles per field of the exact permutation method")
    p.add_argument("--timing-rounds", type=int, default=3, help="field scoring runs per method (best time kept)")
    p.add_argument("--dim", type=int, default=64, help="embedding dim (64: int4 rows are 14.1%% of fp32, so 15%% is reachable)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for everything")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default benchmarks/figures; with --quick out/bench_scoring_quick, git-ignored)")
    p.add_argument("--quick", action="store_true", help="smoke size: 10k train / 5k held-out rows, 1 seed, 2 repeats, 1 timing round")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.ft_seeds, args.repeats, args.timing_rounds = 1, 1, 2, 1
    if args.out is None:
        args.out = REPO / "out" / "bench_scoring_quick" if args.quick else REPO / "benchmarks" / "figures"
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [run_dataset(name.strip(), args) for name in args.datasets.split(",") if name.strip()]
    elapsed = time.perf_counter() - started
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, REPO)] + (sys.argv[1:] if argv is None else list(argv))),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {platform.processor() or platform.platform()}",
        "python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
        "seconds": elapsed, "quick": args.quick,
    }
    text = tables_markdown(results, args)
    suffix = "_quick" if args.quick else ""
    (args.out / f"bench_scoring_tables{suffix}.md").write_text(text + "\n")
    (args.out / f"bench_scoring{suffix}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    paths = plots(results, args.out, suffix)
    print()
    print(text)
    log(f"total {elapsed:.1f} s; wrote {args.out}/bench_scoring_tables{suffix}.md, bench_scoring{suffix}.json" +
        (", " + ", ".join(paths) if paths else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
