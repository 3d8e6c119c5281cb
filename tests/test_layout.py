"""The test suite's own layout: shared fixtures live in tests/conftest.py and plain helpers in tests/helpers, so no
test module imports another (pytest collects every ``test_*`` module, and importing one from another runs or
re-registers its tests and fixtures), and no helper module is named ``test_*``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _test_imports(path: Path) -> list[str]:
    """The ``test_*`` modules ``path`` imports, at any depth (function-local imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or "", *(a.name for a in node.names)]
        else:
            continue
        found += [n for n in names if any(part.startswith("test_") for part in n.split("."))]
    return found


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another(path: Path) -> None:
    assert _test_imports(path) == [], f"{path.name} imports {_test_imports(path)}: move shared code to tests/helpers"


def test_helpers_and_conftest_import_no_test_module() -> None:
    for path in [TESTS / "conftest.py", *sorted((TESTS / "helpers").glob("*.py"))]:
        assert _test_imports(path) == [], f"{path.name} imports {_test_imports(path)}"
    assert not list((TESTS / "helpers").glob("test_*.py"))


def test_the_check_sees_every_import_form(tmp_path: Path) -> None:
    """The parser catches ``import test_x``, ``from test_x import y``, ``from tests import test_x`` and a
    function-local import, and passes helper imports."""
    bad = {"import test_a\n": ["test_a"], "from test_b import c\n": ["test_b"],
           "from tests import test_c\n": ["test_c"], "from . import test_d\n": ["test_d"],
           "def f():\n    from tests.test_e import g\n": ["tests.test_e"]}
    for i, (src, want) in enumerate(bad.items()):
        (tmp_path / f"m{i}.py").write_text(src)
        assert _test_imports(tmp_path / f"m{i}.py") == want, src
    (tmp_path / "ok.py").write_text("from helpers.samplers import Counted\nimport pytest\nfrom testbeds import x\n")
    assert _test_imports(tmp_path / "ok.py") == []
