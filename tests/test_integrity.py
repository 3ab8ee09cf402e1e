"""Table checksums: every stored table's digest is recorded at conversion; a flipped payload bit or swapped
tier codes are caught by session(verify=True), `shark-export check` and `shark-export inspect`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import TupleInputs, built
from onnx import numpy_helper

import shark_export
from shark_export.cli import main as cli_main
from shark_export.errors import IntegrityError
from shark_export.integrity import CHECKSUMS_KEY, verify_model


def _converted(tmp_path, quant="mixed"):
    path = tmp_path / "m.onnx"
    calibration = [TupleInputs.batch(64, seed=s) for s in range(3)]
    shark_export.convert(built(TupleInputs), TupleInputs.batch(4), path, quant=quant, calibration=calibration)
    return path


def _rewrite(path, name, change):
    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            array = numpy_helper.to_array(init).copy()
            change(array)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(model, str(path))


def test_checksums_are_recorded_and_verify(tmp_path):
    path = _converted(tmp_path)
    digests = verify_model(path)
    assert set(digests) == {"user.weight", "item.weight"}
    assert shark_export.session(path, verify=True) is not None
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert CHECKSUMS_KEY in metadata


def test_a_flipped_payload_bit_is_caught(tmp_path, capsys):
    path = _converted(tmp_path, quant="int8")

    def flip(a):
        a[123] ^= 0x10

    _rewrite(path, "user.weight.payload", flip)
    with pytest.raises(IntegrityError, match=r"table 'user.weight' does not match its checksum"):
        shark_export.session(path, verify=True)
    shark_export.session(path)  # without verify it loads: every read stays in bounds
    assert cli_main(["inspect", str(path)]) == 2
    assert "user.weight" in capsys.readouterr().err


def test_swapped_tier_codes_within_a_block_are_caught(tmp_path):
    path = _converted(tmp_path)
    meta = numpy_helper.to_array(next(i for i in onnx.load(str(path)).graph.initializer if i.name == "user.weight.row_meta"))
    assert meta.shape[0] > 0  # the user table is mixed

    def swap(a):  # exchange the codes of two rows with different tiers: same bytes in total, other rows
        planes = a[0, 1:4]
        codes = [sum(((int(planes[k]) >> j) & 1) << k for k in range(3)) for j in range(64)]
        j1 = next(j for j in range(64) if codes[j] != codes[0])
        for k in range(3):
            for j, code in ((0, codes[j1]), (j1, codes[0])):
                bit = np.uint64(1 << j)
                a[0, 1 + k] = (a[0, 1 + k] | bit) if (code >> k) & 1 else (a[0, 1 + k] & ~bit)

    _rewrite(path, "user.weight.row_meta", swap)
    with pytest.raises(IntegrityError, match="user.weight"):
        verify_model(path)


def test_files_without_checksums(tmp_path, capsys):
    path = _converted(tmp_path)
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != CHECKSUMS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    with pytest.raises(IntegrityError, match="no table checksums"):
        shark_export.session(path, verify=True)
    assert verify_model(path, require=False) is None
    assert cli_main(["inspect", str(path)]) == 0
    assert "none recorded" in capsys.readouterr().out
    with pytest.raises(TypeError, match="needs the model's path"):
        shark_export.session(path.read_bytes(), verify=True)
