"""The shark-export command line: convert, check (exit codes), inspect, and its error reporting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from models import DictInput, TupleInputs, tuple_inputs_model

from shark_export.cli import main
from shark_export.inspect_model import read_tables


@pytest.fixture()
def files(tmp_path):
    model = tuple_inputs_model()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save(tuple_inputs_model(seed=1).state_dict(), tmp_path / "other_state.pt")
    torch.save(TupleInputs.batch(4), tmp_path / "example.pt")
    torch.save([TupleInputs.batch(16, seed=s) for s in range(3)], tmp_path / "cal.pt")
    torch.save([torch.randint(0, 2, (16,)).float() for _ in range(3)], tmp_path / "cal_labels.pt")
    return tmp_path


def _convert(files, *extra):
    return main([
        "convert", "--model", "models:tuple_inputs_model", "--state-dict", str(files / "state.pt"),
        "--inputs", str(files / "example.pt"), "--out", str(files / "m.onnx"), "--quiet", *extra,
    ])


def test_convert_check_inspect(files, capsys):
    assert _convert(files, "--quant", "mixed", "--calibration", str(files / "cal.pt"), "--labels", str(files / "cal_labels.pt"),
                    "--report", str(files / "report.json")) == 0
    report = json.loads((files / "report.json").read_text())
    assert {t["table"] for t in report["tables"]} == {"user.weight", "item.weight"}
    assert report["faithfulness"]["passed"] is True
    out = capsys.readouterr().out
    assert "user.weight" in out and "PASSED" in out

    args = ["check", str(files / "m.onnx"), "--model", "models:tuple_inputs_model", "--inputs", str(files / "cal.pt")]
    assert main([*args, "--state-dict", str(files / "state.pt"), "--atol", "0.1", "--rtol", "0.1"]) == 0
    assert "PASSED output" in capsys.readouterr().out
    assert main([*args, "--state-dict", str(files / "state.pt"), "--atol", "0", "--atol", "output:0.1", "--rtol", "0.1",
                 "--report", str(files / "parity.json")]) == 0
    written = json.loads((files / "parity.json").read_text())
    assert written["impact"]["outputs"][0]["atol"] == 0.1 and written["faithfulness"]["passed"] is True
    capsys.readouterr()
    # no goal: the mixed model's impact is measured, the file is faithful, exit 0; labels as convert takes them
    assert main([*args, "--state-dict", str(files / "state.pt"), "--labels", str(files / "cal_labels.pt")]) == 0
    out = capsys.readouterr().out
    assert "measured output" in out and "AUC" in out and "FAILED" not in out
    assert main([*args, "--state-dict", str(files / "state.pt"), "--atol", "1e-9"]) == 1  # a goal missed
    assert "FAILED output" in capsys.readouterr().out
    assert main([*args, "--state-dict", str(files / "state.pt"), "--labels", str(files / "cal_labels.pt"),
                 "--max-dauc", "0.5"]) == 0
    assert "PASSED output" in capsys.readouterr().out
    assert main([*args, "--state-dict", str(files / "other_state.pt")]) == 1  # other weights: unfaithful
    assert "FAILED output" in capsys.readouterr().out

    assert main(["inspect", str(files / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "user.weight" in out and "int4:" in out and "[user] (MultiLookup on user.weight)" in out


def test_convert_dense_int8_reports_its_own_impact(files, capsys):
    assert _convert(files, "--quant", "int8", "--dense", "int8", "--calibration", str(files / "cal.pt"), "--labels",
                    str(files / "cal_labels.pt"), "--report", str(files / "report.json")) == 0
    report = json.loads((files / "report.json").read_text())
    assert report["dense"] == "int8" and report["dense_int8_nodes"] >= 1
    assert report["faithfulness"]["passed"] is True and report["dense_impact"]["outputs"][0]["max_abs"] > 0
    assert "dense layers in int8" in capsys.readouterr().out
    assert main(["inspect", str(files / "m.onnx")]) == 0
    assert "user.weight" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse: not a choice
        _convert(files, "--dense", "int4")
    assert exc.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err


def test_npz_inputs_make_a_dict_argument(tmp_path, capsys):
    batch = DictInput.batch(6)
    np.savez(tmp_path / "example.npz", **{k: v.numpy() for k, v in batch.items()})
    code = main(["convert", "--model", "models:dict_input_model", "--inputs", str(tmp_path / "example.npz"),
                 "--out", str(tmp_path / "m.onnx"), "--quant", "int8", "--quiet"])
    assert code == 0
    assert main(["check", str(tmp_path / "m.onnx"), "--model", "models:dict_input_model", "--inputs", str(tmp_path / "example.npz"),
                 "--atol", "0.05", "--rtol", "0.05"]) == 0


def test_errors_exit_2_and_name_the_problem(files, capsys):
    assert main(["convert", "--model", "models:tuple_inputs_model", "--inputs", str(files / "missing.pt"), "--out", str(files / "x.onnx")]) == 2
    assert "input file" in capsys.readouterr().err
    assert main(["convert", "--model", "models:no_such_factory", "--inputs", str(files / "example.pt"), "--out", str(files / "x.onnx")]) == 2
    assert "no attribute 'no_such_factory'" in capsys.readouterr().err
    (files / "corrupt.onnx").write_bytes(b"not a model")
    assert main(["inspect", str(files / "corrupt.onnx")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert _convert(files, "--prune", "nope", "--calibration", str(files / "cal.pt")) == 2
    assert "unknown field 'nope'" in capsys.readouterr().err
    assert not (files / "x.onnx").exists() and not (files / "m.onnx").exists()


def test_score_and_convert_with_scored_pruning_and_budget(files, capsys):
    args = ["--model", "models:tuple_inputs_model", "--state-dict", str(files / "state.pt")]
    assert main(["score", *args, "--calibration", str(files / "cal.pt"), "--labels", str(files / "cal_labels.pt"), "--rows",
                 "--plot", str(files / "scores.png"), "--json", str(files / "scores.json")]) == 0
    result = json.loads((files / "scores.json").read_text())
    assert set(result["fields"]["scores"]) == {"user", "item"}
    assert result["rows"]["user.weight"]["rows"] == 300
    assert (files / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert "row priorities (count)" in capsys.readouterr().out
    assert _convert(files, "--calibration", str(files / "cal.pt"), "--labels", str(files / "cal_labels.pt"), "--prune-keep", "1",
                    "--budget", "0.5", "--report", str(files / "report.json")) == 0
    report = json.loads((files / "report.json").read_text())
    assert len(report["pruned_fields"]) == 1 and report["quant"] == "budget 0.5"
    assert report["ratio"] <= 0.5
    assert _convert(files, "--prune-keep", "1") == 2
    assert "--prune-keep/--prune-drop-fraction score fields" in capsys.readouterr().err
    # a budget below the int4 floor, with the clipping search: int2 and dropped rows, the budget kept
    assert _convert(files, "--calibration", str(files / "cal.pt"), "--budget", "0.06", "--clip", "l2",
                    "--report", str(files / "low.json")) == 0
    low = json.loads((files / "low.json").read_text())
    assert low["ratio"] <= 0.06 and low["faithfulness"]["passed"]
    tiers = {k for t in low["tables"] for k, n in t["tiers"].items() if n}
    assert "int2" in tiers and not tiers & {"int8", "fp16", "fp32"}


def test_convert_scale_group_choices(files, capsys):
    """--scale-group: auto (groups only where every row keeps its own bound: on this model's N(0, 1) rows, a
    header per row), none (a header per row, v2), G rows (asked for: shared); inspect shows the groups; a bad
    value is a usage error naming it."""
    sizes = {}
    for choice in ("auto", "none", "64"):
        assert _convert(files, "--quant", "int4", "--scale-group", choice, "--calibration", str(files / "cal.pt"),
                        "--report", str(files / f"{choice}.json")) == 0
        report = json.loads((files / f"{choice}.json").read_text())
        assert report["faithfulness"]["passed"]
        sizes[choice] = report["bytes_after"]
        tables = read_tables(files / "m.onnx")[0]
        expected = {"auto": 0, "none": 0, "64": 64}[choice]
        assert {t.scale_group_rows for t in tables.values()} == {expected}
        assert {t.format_version for t in tables.values()} == {3 if expected else 2}
        capsys.readouterr()
        assert main(["inspect", str(files / "m.onnx")]) == 0
        assert (f"groups:{expected}" in capsys.readouterr().out) == bool(expected)
    assert sizes["auto"] == sizes["none"] and sizes["64"] < sizes["none"]
    assert _convert(files, "--scale-group", "3") == 2
    assert "scale_group must be" in capsys.readouterr().err


def test_prune_then_finetune_then_convert(files, capsys):
    """SHARK's order from the command line: prune (scores, the pruned copy), the user's fine-tuning, convert."""
    args = ["--model", "models:tuple_inputs_model", "--state-dict", str(files / "state.pt")]
    assert main(["prune", *args, "--calibration", str(files / "cal.pt"), "--labels", str(files / "cal_labels.pt"),
                 "--prune-keep", "1", "--out", str(files / "pruned.pt")]) == 0
    out = capsys.readouterr().out
    assert "field scores (ablation" in out and "shark-export convert --module" in out
    pruned = torch.load(files / "pruned.pt", weights_only=False)
    batches, labels = torch.load(files / "cal.pt"), torch.load(files / "cal_labels.pt")
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    for batch, y in zip(batches, labels):  # the user's own loop
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(pruned(*batch).reshape(-1), y).backward()
        optimizer.step()
    torch.save(pruned.eval(), files / "tuned.pt")
    assert main(["convert", "--module", str(files / "tuned.pt"), "--inputs", str(files / "example.pt"), "--out",
                 str(files / "tuned.onnx"), "--calibration", str(files / "cal.pt"), "--quant", "int8", "--quiet",
                 "--report", str(files / "tuned.json")]) == 0
    report = json.loads((files / "tuned.json").read_text())
    assert len(report["pruned_fields"]) == 1 and report["faithfulness"]["passed"]
    from shark_export.model_io import OnnxModelRunner
    with torch.no_grad():
        want = pruned(*batches[0]).numpy()
    np.testing.assert_allclose(OnnxModelRunner(files / "tuned.onnx").run(batches[0])[0].reshape(want.shape), want, atol=0.02)
    assert main(["prune", *args, "--calibration", str(files / "cal.pt"), "--out", str(files / "x.pt")]) == 2
    assert "name the fields to prune" in capsys.readouterr().err and not (files / "x.pt").exists()


def test_help_does_not_load_torch():
    """`shark-export --help` (and building the parser) must not import torch or the converter: it answers in about
    a second, not the several torch takes. Checked in a child process, whose modules this test does not share."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import contextlib, io, sys
        from shark_export import cli
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
            cli.main(["--help"])
        heavy = sorted(m for m in ("torch", "shark_export.converter", "shark_export.demo") if m in sys.modules)
        assert not heavy, heavy
        for command in ("convert", "check", "score", "inspect", "prune", "optimize", "demo"):
            assert command in out.getvalue(), command
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.stdout.strip() == "ok", result.stderr


def test_the_cli_size_literals_are_the_writers():
    from shark_export import cli_parser, streamed_tables

    assert (cli_parser._ALIGNMENT, cli_parser._DEFAULT_SHARD_BYTES) == (streamed_tables.ALIGNMENT, streamed_tables.DEFAULT_SHARD_BYTES)


@pytest.mark.parametrize("ops", ["custom", "standard"])
def test_inspect_lists_the_inputs_and_outputs_a_server_feeds_and_reads(tmp_path, capsys, ops):
    """A dict argument `batch` becomes inputs `batch_<key>`: inspect prints every input and output with its dtype
    and shape (read from the file itself, compared with onnx's own view of it)."""
    import onnx

    from shark_export import convert

    path = tmp_path / "m.onnx"
    convert(DictInput().eval(), DictInput.batch(4), path, quant="int8", ops=ops)
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    graph = onnx.load(str(path)).graph
    listed = out[out.index("inputs:"):]
    for value in [*graph.input, *graph.output]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        assert any(line.split()[:2] == [value.name, dtype] for line in listed.splitlines()), (value.name, listed)
    assert all(v.name.startswith("batch_") for v in graph.input if v.name not in {i.name for i in graph.initializer})


def test_convert_into_a_missing_directory_says_so(files, capsys):
    assert main(["convert", "--model", "models:tuple_inputs_model", "--state-dict", str(files / "state.pt"),
                 "--inputs", str(files / "example.pt"), "--out", str(files / "typo" / "m.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "shark-export convert: error: output directory" in err and "typo" in err and "mkdir -p" in err
    assert not (files / "typo").exists()


@pytest.mark.parametrize("flags, named", [
    (["--module", "{dir}/nope.pt"], "--module '{dir}/nope.pt' does not exist"),
    (["--model", "models:tuple_inputs_model", "--state-dict", "{dir}/nope.pt"], "--state-dict '{dir}/nope.pt' does not exist"),
    (["--model", "models:tuple_inputs_model", "--checkpoint", "{dir}/nope"], "--checkpoint '{dir}/nope' does not exist"),
    (["--model", "models:tuple_inputs_model", "--state-dict", "{dir}"], "--state-dict '{dir}' is not a file"),
])
def test_a_missing_model_file_names_the_flag(files, capsys, flags, named):
    """No FileNotFoundError traceback: exit 2 with the flag and the path, and nothing written."""
    flags = [f.format(dir=files) for f in flags]
    out = files / "m.onnx"
    assert main(["convert", *flags, "--inputs", str(files / "example.pt"), "--out", str(out), "--quiet"]) == 2
    assert named.format(dir=files) in capsys.readouterr().err
    assert not out.exists()
