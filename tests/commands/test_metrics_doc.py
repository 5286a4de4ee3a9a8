from pathlib import Path

from flopwatch.commands.metrics_doc import render


def test_metrics_reference_is_current():
    committed = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert committed == render(), "docs/metrics.md is stale: run scripts/gen-metrics-doc"
