"""F-Permutation scoring and pruning: planted signal, brute-force Taylor, sharding, distributed, plans, pruning."""

from __future__ import annotations

import copy
import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from scoring_models import Planted, distributed_worker, planted_data
from torch import nn

import shark_export
from shark_export.errors import (
    SharkExportError,
    UnknownFieldError,
    UnsupportedModelError,
)
from shark_export.field_scoring import mean_stats, score_fields, taylor_stats
from shark_export.fields import find_fields
from shark_export.model_io import OnnxModelRunner
from shark_export.pruning import prune_fields


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Planted()
    batches, labels = planted_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(8):
        for batch, y in zip(batches, labels):
            optimizer.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(batch), y).backward()
            optimizer.step()
    return model.eval(), batches, labels


@pytest.mark.parametrize("method", ["ablation", "taylor", "permutation"])
def test_planted_signal_field_ranks_first_and_noise_last(trained, method):
    model, batches, labels = trained
    scores = score_fields(model, batches, labels, method=method, repeats=2)
    ranked = [name for name, _ in scores.sorted()]
    assert ranked[0] == "signal"
    assert scores.scores["signal"] > 2 * scores.scores["noise"]
    assert set(ranked) == {"signal", "noise", "tags", "shared#0", "shared#1"}


def test_taylor_equals_brute_force_per_sample_gradients(trained):
    model, batches, labels = trained
    scores = score_fields(model, batches[:2], labels[:2], method="taylor")
    fields = find_fields(model, batches[0])
    means = mean_stats(model, fields, batches[:2]).means()
    modules = {"signal": ("signal", "s"), "noise": ("noise", "n"), "shared#0": ("shared", "a"), "shared#1": ("shared", "b")}
    for name, (module_name, key) in modules.items():
        total, count = 0.0, 0
        for batch, y in zip(batches[:2], labels[:2]):
            for i in range(y.shape[0]):  # one sample at a time: an independent per-sample gradient
                single = {k: v[i : i + 1] for k, v in batch.items() if k not in ("t", "o")}
                start, stop = int(batch["o"][i]), int(batch["o"][i + 1]) if i + 1 < y.shape[0] else batch["t"].shape[0]
                single["t"], single["o"] = batch["t"][start:stop], torch.tensor([0])
                module = getattr(model, module_name)
                v = module(single[key]).detach().requires_grad_(True)
                parts = {n: getattr(model, m)(single[k]) for n, (m, k) in modules.items()}
                parts[name] = v
                tags = model.tags(single["t"], single["o"])
                logits = model.head(torch.cat([parts["signal"], parts["noise"], tags, parts["shared#0"], parts["shared#1"]], 1)).squeeze(1)
                loss = nn.functional.binary_cross_entropy_with_logits(logits, y[i : i + 1], reduction="sum")
                (g,) = torch.autograd.grad(loss, v)
                total += abs(float((g.double() * (torch.from_numpy(means[name]) - v.detach().double())).sum()))
                count += 1
        assert scores.scores[name] == pytest.approx(total / count, rel=1e-6)


def test_ablation_equals_the_loss_change_of_the_pruned_model(trained):
    """ablation: the mean per-sample loss increase when one field reads its mean embedding, which is what
    prune_fields builds (a model copy that broadcasts the mean), measured here with plain torch."""
    model, batches, labels = trained
    scores = score_fields(model, batches, labels, method="ablation")
    assert scores.method == "ablation" and scores.samples == sum(len(y) for y in labels)

    def mean_loss(m) -> float:
        with torch.no_grad():
            total = sum(float(nn.functional.binary_cross_entropy_with_logits(m(b), y, reduction="sum")) for b, y in zip(batches, labels))
        return total / sum(len(y) for y in labels)

    base = mean_loss(model)
    for name in ("signal", "noise", "tags", "shared#0", "shared#1"):
        pruned = prune_fields(model, scores.plan(drop=[name]), batches)
        assert scores.scores[name] == pytest.approx(mean_loss(pruned) - base, rel=1e-5, abs=1e-9)


def test_sharded_statistics_merge_to_the_single_pass(trained):
    model, batches, labels = trained
    fields = find_fields(model, batches[0])
    full_means = mean_stats(model, fields, batches).means()
    merged_means = mean_stats(model, fields, batches[:3]).merge(mean_stats(model, fields, batches[3:])).means()
    for name in full_means:
        np.testing.assert_allclose(merged_means[name], full_means[name], rtol=1e-12)
    full = taylor_stats(model, fields, batches, labels, full_means)
    merged = taylor_stats(model, fields, batches[:5], labels[:5], full_means).merge(
        taylor_stats(model, fields, batches[5:], labels[5:], full_means)
    )
    for name in fields:
        assert merged.sums[name] == pytest.approx(full.sums[name], rel=1e-12)
        assert merged.counts[name] == full.counts[name]


def test_two_process_gloo_run_equals_single_process(trained, tmp_path):
    model, batches, labels = trained
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(distributed_worker, args=(2, port, model.state_dict(), str(tmp_path)), nprocs=2, join=True)
    single = score_fields(model, batches, labels, method="taylor")
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["samples"] == single.samples
        for name, score in single.scores.items():
            assert result["scores"][name] == pytest.approx(score, rel=1e-9)


def test_norm_scores_are_mean_l2_norms(trained):
    model, batches, labels = trained
    scores = score_fields(model, batches, labels, method="norm")
    ids = torch.cat([b["s"] for b in batches])
    assert scores.scores["signal"] == pytest.approx(model.signal.weight[ids].norm(dim=1).mean().item(), rel=1e-6)


def test_results_table_json_plot_and_plans(trained, tmp_path):
    model, batches, labels = trained
    scores = score_fields(model, batches, labels)
    text = str(scores)
    assert text.splitlines()[2].split()[1] == "signal"
    assert json.loads(scores.to_json())["method"] == "ablation"  # the default
    scores.plot(tmp_path / "scores.png")
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ranked = [n for n, _ in scores.sorted()]
    assert scores.plan(keep=2).drop == ranked[2:]
    assert scores.plan(drop_fraction=0.4).drop == ranked[3:]
    plan = scores.plan(drop=["noise"])
    assert plan.drop == ["noise"] and set(plan.means) == {"noise"}
    with pytest.raises(UnknownFieldError, match=r"unknown field\(s\) \['nope'\]"):
        scores.plan(drop=["nope"])
    with pytest.raises(SharkExportError, match="exactly one of"):
        scores.plan(keep=1, drop_fraction=0.5)


def test_errors(trained):
    model, batches, labels = trained
    with pytest.raises(SharkExportError, match="labels have 3 rows but the model's output has shape \\(64,\\)"):
        score_fields(model, batches[:1], [torch.ones(3)])
    with pytest.raises(SharkExportError, match="2 batches but 1 label arrays"):
        score_fields(model, batches[:2], labels[:1])
    with pytest.raises(UnsupportedModelError, match="no nn.Embedding"):
        score_fields(nn.Linear(2, 1), [torch.zeros(4, 2)], [torch.zeros(4)])
    with pytest.raises(SharkExportError, match="unknown method 'shap'"):
        score_fields(model, batches, labels, method="shap")


def test_pruned_copy_equals_converter_pruning_and_converts_itself(trained, tmp_path):
    model, batches, labels = trained
    plan = score_fields(model, batches, labels).plan(drop=["noise", "shared#1"])
    pruned = prune_fields(model, plan, batches)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), pruned.state_dict().values()))
    with torch.no_grad():
        want = pruned(batches[0]).numpy()
        assert not np.allclose(want, model(batches[0]).numpy())
    convert_pruned = shark_export.convert(model, (batches[0],), tmp_path / "a.onnx", quant="fp32", prune=plan, calibration=batches)
    np.testing.assert_allclose(OnnxModelRunner(tmp_path / "a.onnx").run(batches[0])[0], want, rtol=1e-5, atol=1e-5)
    report = shark_export.convert(copy.deepcopy(pruned), (batches[0],), tmp_path / "b.onnx", quant="fp32", calibration=batches)
    assert sorted(report.pruned_fields) == ["noise", "shared#1"] and convert_pruned.faithfulness and report.faithfulness
    np.testing.assert_allclose(OnnxModelRunner(tmp_path / "b.onnx").run(batches[0])[0], want, rtol=1e-5, atol=1e-5)
    assert not any("noise" in t.table and not t.pruned for t in report.tables)
    torch.save(pruned, tmp_path / "pruned.pt")  # hooks are module-level functions: picklable
    reloaded = torch.load(tmp_path / "pruned.pt", weights_only=False)
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(batches[0]).numpy(), want, rtol=1e-6)
