"""The import rules between the parts (docs/architecture.md), read from the source itself.

Every ``import`` and ``from ... import`` in every module counts, including those inside
functions and under ``if TYPE_CHECKING:``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ("switch", "media", "exchange", "compliance", "config")
PARTS = (*DOMAIN, "store", "api", "dce")

# part -> the parts it must never import.
FORBIDDEN: dict[str, frozenset[str]] = {
    # SIP only: the call core reaches media, routing and money through effects.
    "switch": frozenset({"media", "exchange", "compliance", "config", "store", "api", "dce"}),
    "media": frozenset({"switch", "exchange", "compliance", "config", "store", "api", "dce"}),
    "exchange": frozenset({"switch", "media", "config", "store", "api", "dce"}),
    "compliance": frozenset({"switch", "media", "exchange", "config", "store", "api", "dce"}),
    "config": frozenset(set(PARTS) - {"config"}),
    # Persistence knows the domain's records, never the HTTP side or the application.
    "store": frozenset({"api", "dce"}),
    # The admin API talks to the store and the domain, never to SIP or the application.
    "api": frozenset({"switch", "media", "dce"}),
    "dce": frozenset(),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(part: str) -> list[str]:
    out = []
    for path in sorted((ROOT / part).rglob("*.py")):
        for line, target in imports_of(path):
            if target in FORBIDDEN[part]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return out


@pytest.mark.parametrize("part", PARTS)
def test_part_imports_only_what_it_may(part: str) -> None:
    assert (ROOT / part / "__init__.py").exists()
    assert violations(part) == []


def test_the_rules_cover_every_part() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(PARTS)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from store.cdr import Cdr\n"
        "def f() -> None:\n    import media.rtp\n"
    )
    assert [t for _, t in imports_of(src)] == ["typing", "store", "media"]
