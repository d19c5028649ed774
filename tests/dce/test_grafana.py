"""docs/grafana/dce.json is a dashboard Grafana 10+ imports, on documented metrics only.

That each metric it queries exists in a real scrape is checked against `dce run` in
tests/integration/test_observability.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = json.loads((ROOT / "docs/grafana/dce.json").read_text())
METRIC = re.compile(r"\b(?:dce|process|python)_[a-z0-9_]+")


def queries() -> list[str]:
    exprs = [t["expr"] for p in DOC["panels"] for t in p.get("targets", [])]
    return exprs + [v["definition"] for v in DOC["templating"]["list"] if "definition" in v]


def test_the_shape_grafana_imports() -> None:
    assert DOC["schemaVersion"] >= 36 and DOC["uid"] and DOC["title"]
    assert "id" not in DOC  # an id would clash with the importing Grafana's own
    panels: list[dict[str, Any]] = DOC["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in DOC["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat"), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip()
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            # Filters use only the dashboard's variables.
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), (p["title"], var)


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in DOC["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine


def test_every_metric_it_queries_is_documented() -> None:
    documented = set(METRIC.findall((ROOT / "docs/operations.md").read_text()))
    used = {re.sub(r"_bucket$", "", m) for q in queries() for m in METRIC.findall(q)}
    assert len(used) > 25
    assert sorted(used - documented) == []
