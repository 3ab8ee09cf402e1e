"""The package stays cheap to read and extend (issue 25): no module over 450 lines, no function over 80, no import
cycle between its modules, in-function imports included (tools/check_structure.py)."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_structure", REPO / "tools" / "check_structure.py")
check_structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_structure)


def test_the_package_is_within_the_size_and_import_rules():
    assert check_structure.problems(REPO) == []


def test_the_checker_finds_what_it_looks_for(tmp_path):
    """A long function, a long module and a two-module cycle (one import inside a function) are all reported."""
    package = tmp_path / check_structure.PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    body = "\n".join(f"    x{i} = {i}" for i in range(check_structure.MAX_FUNCTION_LINES))
    (package / "a.py").write_text(f"from . import b\n\n\ndef long():\n{body}\n")
    (package / "b.py").write_text("def f():\n    from .a import long\n    return long\n" + "\n" * check_structure.MAX_MODULE_LINES)
    found = check_structure.problems(tmp_path)
    assert any("a.py:4: long has" in p for p in found), found
    assert any(p.startswith(f"{check_structure.PACKAGE}/b.py: ") and "lines" in p for p in found), found
    assert any(p == f"import cycle: {check_structure.PACKAGE}.a -> {check_structure.PACKAGE}.b" for p in found), found
