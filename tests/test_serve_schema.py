"""Schemathesis against the server's own OpenAPI schema: no 5xx, answers match the schema."""

from __future__ import annotations

import pytest
import schemathesis
from conftest import API_KEY, start_server, stop_server
from hypothesis import HealthCheck, given, settings


@pytest.fixture(scope="module")
def api_schema(trained_run):
    # Small limits keep every generated request quick.
    proc, base = start_server(trained_run, "--max-tokens", "64", "--max-streams", "16")
    try:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
    finally:
        stop_server(proc)


def test_api_matches_its_schema(api_schema):
    # Each operation in turn, with hypothesis driven by hand: bounded and fast.
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)

        check()
    assert "POST /v1/completions" in labels


def test_n_is_bounded_by_max_streams_not_by_the_schema(trained_run):
    import httpx

    proc, base = start_server(trained_run, "--max-streams", "256", "--max-tokens", "2")
    try:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        body = {"model": trained_run.name, "prompt": "a", "max_tokens": 2, "n": 200, "seed": 1}
        answer = httpx.post(f"{base}/v1/completions", json=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["choices"]) == 200
        body = {**body, "n": 1, "best_of": 257}
        answer = httpx.post(f"{base}/v1/completions", json=body, headers=headers, timeout=30)
        assert answer.status_code == 400
        assert "at most 256" in answer.json()["error"]["message"]
    finally:
        stop_server(proc)
