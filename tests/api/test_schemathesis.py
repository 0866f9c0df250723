"""The OpenAPI document holds for a real server: schemathesis runs every check against
`/openapi.json` of `memora serve` (see run_schemathesis.py for the set-up and its limits)."""

from __future__ import annotations

from run_schemathesis import run_schemathesis

report_lines_shown: int = 80


def test_every_operation_passes_every_schemathesis_check() -> None:
    finished = run_schemathesis(capture=True)
    report = (finished.stdout + finished.stderr).splitlines()
    assert finished.returncode == 0, "\n".join(report[-report_lines_shown:])
    assert any("generated" in line and "passed" in line for line in report), report[-5:]
