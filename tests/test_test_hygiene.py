"""Rules for the tests themselves, read from their source (AST)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_pytest_raises(func: ast.expr, raises_names: set[str]) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "raises" and isinstance(func.value, ast.Name) and func.value.id == "pytest"
    return isinstance(func, ast.Name) and func.id in raises_names


def raises_without_match(source: str) -> list[int]:
    """Line numbers of the ``pytest.raises(...)`` calls in ``source`` that have no ``match=`` keyword (also
    ``raises(...)`` after ``from pytest import raises [as name]``)."""
    tree = ast.parse(source)
    raises_names = {alias.asname or alias.name for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module == "pytest"
                    for alias in node.names if alias.name == "raises"}
    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and _is_pytest_raises(node.func, raises_names)
                  and not any(kw.arg == "match" for kw in node.keywords))


def test_the_check_sees_every_form():
    source = (
        "import pytest\nfrom pytest import raises as r\n"
        "with pytest.raises(ValueError):\n    pass\n"                                  # 3: flagged
        "with pytest.raises(ValueError, match='x') as err:\n    pass\n"                # 5: fine
        "with pytest.raises(\n    KeyError,\n):\n    pass\n"                            # 7: flagged
        "with r(TypeError):\n    pass\n"                                                # 11: flagged
        "with pytest.raises(OSError, match='y'), open('f'):\n    pass\n"               # 13: fine
    )
    assert raises_without_match(source) == [3, 7, 11]


def test_every_pytest_raises_says_which_error_it_expects():
    """``pytest.raises(X)`` passes on any ``X``, also one raised for another reason than the test is about;
    ``match=`` names what the message must say (the field or file, or the fix)."""
    missing = [f"{path.relative_to(TESTS.parent)}:{line}" for path in sorted(TESTS.rglob("*.py"))
               for line in raises_without_match(path.read_text())]
    assert not missing, f"pytest.raises without match= (add a fragment of the expected message): {missing}"
