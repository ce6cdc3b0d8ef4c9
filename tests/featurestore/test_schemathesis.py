"""Schemathesis over the OpenAPI document of a real `featurestore serve` (two workers, API keys
on, PostgreSQL and Redis): generated requests to every operation, every check, zero failures.

Generation is deterministic (same cases every run, no example database), so a failure here is
reproducible with the command in its message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.featurestore import pipeline
from tests.servers import featurestore_server

pytestmark = [pytest.mark.heavy, pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
SERVICE = "fraud_detection_v1"
EXAMPLES_PER_OPERATION = 40
MIN_CASES = 1_000
# The monitor the OpenAPI examples name, so a generated silence can be created (201), too.
MONITORS_YAML = f"""
monitors:
  fraud_scoring:
    feature_service: {SERVICE}
    window: {{rows: 1000}}
    rules:
      - {{kind: feature_drift}}
"""


@pytest.fixture(scope="module")
def api(served, tmp_path_factory):
    from featurestore.apikeys import create_key
    from featurestore.db import engine
    from fraud_example.labels import labeled_transactions

    tmp = tmp_path_factory.mktemp("schemathesis")
    (tmp / "monitors.yaml").write_text(MONITORS_YAML)
    rows = labeled_transactions(served, pipeline.START, pipeline.END).slice(0, 8)
    pipeline.untrained_model(served, rows, tmp, SERVICE)
    token, _ = create_key(engine(served), "schemathesis", ["admin"])
    server, url = featurestore_server(
        served, tmp, api_auth="keys", model_path=str(tmp / "model.pt"),
        monitors_config=str(tmp / "monitors.yaml"),
    )
    yield url, token, tmp
    server.terminate()
    server.wait(timeout=30)


def test_every_operation_passes_every_check(api) -> None:
    url, token, tmp = api
    report = tmp / "report.json"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
        "run", f"{url}/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--checks", "all",
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--generation-deterministic",  # and so no example database
        "--workers", "1", "--request-timeout", "30", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]
    # In tmp: schemathesis keeps its replay files in the working directory.
    run = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=600, cwd=tmp
    )
    output = f"{run.stdout[-20_000:]}\n{run.stderr[-5_000:]}"
    assert report.exists(), output
    summary = json.loads(report.read_text())
    figures = (f"{summary['test_cases']['generated']} cases over "
               f"{summary['operations']['tested']} operations")
    assert run.returncode == 0, f"{figures}:\n{output}"
    assert summary["failures"] == [] and summary["errors"] == [], figures
    assert summary["operations"]["tested"] == summary["operations"]["total"], figures
    assert summary["test_cases"]["generated"] >= MIN_CASES, figures
    print(figures)
