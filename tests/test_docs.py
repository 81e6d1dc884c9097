"""The README's supported-layer table is generated from the registry; it must not go stale."""

from __future__ import annotations

import importlib.util

from .conftest import REPO


def test_readme_support_table_is_current():
    spec = importlib.util.spec_from_file_location("support_table", REPO / "scripts" / "support_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.embedded((REPO / "README.md").read_text()) == module.table(), (
        "README.md's layer table is stale: run python scripts/support_table.py --write"
    )


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
