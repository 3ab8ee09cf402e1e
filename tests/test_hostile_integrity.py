"""verify and inspect vouch for what ONNX Runtime computes (issue 21.1, 21.4): duplicate or shadowed tables are
refused as ambiguous, and every lookup attribute that changes outputs is under the recorded digest."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import shark_export
from shark_export import convert
from shark_export.cli import main
from shark_export.errors import AmbiguousModelError, IntegrityError
from shark_export.integrity import LOOKUPS_KEY, verify_model


class BagsAndGathers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.user = torch.nn.Embedding(50, 8)
        self.hist = torch.nn.EmbeddingBag(60, 8, mode="mean", padding_idx=2)
        self.tags = torch.nn.EmbeddingBag(40, 8, mode="sum")
        self.out = torch.nn.Linear(24, 1)

    def forward(self, user, hist, tags, offsets):
        return self.out(torch.cat([self.user(user), self.hist(hist), self.tags(tags, offsets)], 1)).squeeze(-1)


def batch():
    g = torch.Generator().manual_seed(3)
    return (torch.randint(0, 50, (6,), generator=g), torch.randint(0, 60, (6, 4), generator=g),
            torch.randint(0, 40, (10,), generator=g), torch.tensor([0, 2, 2, 5, 7, 9]))


@pytest.fixture(scope="module", params=["fused", "single"])
def converted(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "m.onnx"
    convert(BagsAndGathers().eval(), batch(), path, quant="int8", fuse_lookups=request.param == "fused")
    verify_model(path)
    return path


def _save(proto, tmp_path, name="t.onnx"):
    out = tmp_path / name
    onnx.save(proto, str(out))
    return out


def _feeds(path):
    runner = shark_export.session(path)
    names = [i.name for i in runner.get_inputs()]
    return dict(zip(names, [t.numpy() for t in batch()]))


def test_a_duplicate_initializer_before_the_original_is_refused(converted, tmp_path):
    model = onnx.load(str(converted))
    original = next(i for i in model.graph.initializer if i.name.endswith(".payload"))
    tampered = copy.deepcopy(original)
    data = numpy_helper.to_array(tampered).copy()
    data[: data.size // 2] ^= 0x5A
    tampered.CopyFrom(numpy_helper.from_array(data, original.name))
    model.graph.initializer.insert(0, tampered)
    bad = _save(model, tmp_path)
    with pytest.raises(AmbiguousModelError, match=rf"{original.name}.*more than once"):
        verify_model(bad)
    with pytest.raises(AmbiguousModelError):
        shark_export.session(bad, verify=True)
    assert main(["inspect", str(bad)]) == 2


def test_a_table_tensor_shadowed_by_a_graph_input_is_refused(converted, tmp_path):
    model = onnx.load(str(converted))
    payload = next(i for i in model.graph.initializer if i.name.endswith(".payload"))
    model.graph.input.append(helper.make_tensor_value_info(payload.name, onnx.TensorProto.UINT8, [None]))
    with pytest.raises(AmbiguousModelError, match="graph input.*name of an initializer"):
        verify_model(_save(model, tmp_path))


def test_a_node_reading_two_tables_tensors_is_refused(converted, tmp_path):
    model = onnx.load(str(converted))
    node = next(n for n in model.graph.node if n.domain == shark_export.DOMAIN)
    payloads = [i.name for i in model.graph.initializer if i.name.endswith(".payload")]
    other = next(p for p in payloads if p != node.input[0]).removesuffix(".payload")
    node.input[1] = f"{other}.row_meta"
    with pytest.raises(IntegrityError):  # the first reader: its table no longer matches its digest
        verify_model(_save(model, tmp_path))
    model = onnx.load(str(converted))  # a second reader of a table, from other tensors
    node = next(n for n in model.graph.node if n.domain == shark_export.DOMAIN)
    twin = copy.deepcopy(node)
    twin.name, twin.output[0] = "twin", "twin_out"
    twin.input[1] = f"{other}.row_meta"
    model.graph.node.append(twin)
    with pytest.raises(AmbiguousModelError, match="one table has one set of tensors"):
        verify_model(_save(model, tmp_path))


def test_a_lookup_inside_a_subgraph_is_refused(converted, tmp_path):
    model = onnx.load(str(converted))
    node = next(n for n in model.graph.node if n.domain == shark_export.DOMAIN)
    branch = helper.make_graph([copy.deepcopy(node)], "branch", [], [helper.make_tensor_value_info(node.output[0], 1, None)])
    cond = helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch, name="wrapper")
    model.graph.node.append(cond)
    with pytest.raises(AmbiguousModelError, match="inside a subgraph"):
        verify_model(_save(model, tmp_path))


def _set(node, name, value):
    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(helper.make_attribute(name, value))


@pytest.mark.parametrize("change", ["padding_idx", "mode", "include_last_offset", "output_dtype", "field_names", "input"])
def test_every_attribute_that_changes_outputs_is_verified(converted, tmp_path, change):
    model = onnx.load(str(converted))
    nodes = [n for n in model.graph.node if n.domain == shark_export.DOMAIN]
    multi = [n for n in nodes if n.op_type == "RowwiseDequantMultiLookup"]
    if multi:
        node = multi[0]
        lists = {a.name: list(a.ints) for a in node.attribute if a.type == onnx.AttributeProto.INTS}
        if change in ("padding_idx", "mode", "include_last_offset"):
            key = {"padding_idx": "padding_idxs", "mode": "modes", "include_last_offset": "include_last_offsets"}[change]
            values = lists[key]
            values[1] = {"padding_idxs": 5, "modes": 0, "include_last_offsets": 1}[key] if values[1] != 5 else 3
            _set(node, key, values)
    else:
        # the bag with offsets (a 2-D bag's inputs end at its ids: swapping input 3 with the last would be no change)
        node = next(n for n in nodes if n.op_type == "RowwiseDequantEmbeddingBag" and len(n.input) > 4)
        if change in ("padding_idx", "mode", "include_last_offset"):
            current = {a.name: a.i for a in node.attribute}.get(change, 0)
            _set(node, change, {"padding_idx": 7, "mode": 1 - current, "include_last_offset": 1 - current}[change])
    if change == "output_dtype":
        _set(node, "output_dtype", 10)
    if change == "field_names" and multi:
        _set(node, "field_names", "a\nb\nc")
    if change == "input":
        node.input[3], node.input[-1] = node.input[-1], node.input[3]
    if not multi and change == "field_names":
        pytest.skip("single ops have no field_names")
    with pytest.raises(IntegrityError, match=rf"lookup node '{node.name}' does not match its checksum"):
        verify_model(_save(model, tmp_path))


def test_a_file_without_lookup_checksums_is_refused(converted, tmp_path):
    model = onnx.load(str(converted))
    kept = [p for p in model.metadata_props if p.key != LOOKUPS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    with pytest.raises(IntegrityError, match="no lookup checksums"):
        verify_model(_save(model, tmp_path))


def test_untouched_files_verify_and_run(converted):
    assert verify_model(converted)
    out = shark_export.session(converted, verify=True).run(None, _feeds(converted))[0]
    assert out.shape == (6,) and np.all(np.isfinite(out))


@pytest.mark.parametrize("seed", [1, 2])
def test_tampered_files_are_refused_or_compute_the_same(converted, tmp_path, seed):
    """tests/probe_driver.py in a child: no crash, no untyped error, no file that verifies and computes otherwise."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, **_feeds(converted))
    driver = Path(__file__).resolve().parent / "probe_driver.py"
    done = subprocess.run([sys.executable, str(driver), str(converted), str(feeds), "--seed", str(seed), "--cases", "150"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["cases"] == 150 and counts["refused"] > 0
    assert counts["silent_wrong"] == 0 and counts["untyped_error"] == 0, counts["failures"]
