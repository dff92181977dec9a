"""The package type-checks: ``mypy`` (configured in pyproject.toml) reports no error in src/."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mypy_reports_no_error_in_src():
    api = pytest.importorskip("mypy.api", reason="mypy is part of the test extra")
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "src")])
    assert status == 0, out + err
    assert "Success: no issues found" in out
