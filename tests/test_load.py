"""Smoke runs of the load harness (tiny numbers, a few seconds) so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from load import voice
from load.report import percentile
from tests.servers import RunningServer


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (
        50.0,
        95.0,
        100.0,
    )
    assert percentile([7.0], 99) == 7.0


@pytest.mark.asyncio
async def test_voice_scenario_reports_latencies_and_loses_nothing(server: RunningServer) -> None:
    params = voice.VoiceParams(sessions=4, turns=2, partials=2, partial_gap_ms=20, ttft_ms=0)
    report = await voice.run([server.ws], params)
    summary = report.summary()
    assert not report.errors, report.errors
    assert report.counts["acked_turns"] == 8
    assert report.counts["lost_turns"] == 0
    assert report.counts["turns_interrupted"] == 4
    assert report.counts.get("heard_text_mismatch", 0) == 0
    for label in ("early routing", "no early routing"):
        assert summary[f"final input → first delta ({label})"]["n"] == 4
    assert summary["barge-in → turn_end"]["n"] == 4
    assert "p99" in report.table()


def test_cli_spawns_a_server_runs_voice_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "voice.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "load",
            "voice",
            "--spawn",
            "--sessions",
            "2",
            "--turns",
            "2",
            "--duration-s",
            "60",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["counts"]["lost_turns"] == 0
    assert report["counts"]["server_cpu_ms"] > 0
    assert "final input → first delta (early routing)" in report["latency_ms"]
    assert "barge-in" in result.stdout


@pytest.mark.parametrize("target", ["server", "ws", "socketio"])
def test_fanout_delivers_everything_to_every_subscriber(target: str) -> None:
    from load.fanout import FanoutParams, run

    result = run(target, FanoutParams(subscribers=20, messages=30, size=50, timeout_s=60))
    assert result.deliveries_per_s > 0
    # CPU is not asserted: a tiny run can fit in one clock tick (10 ms) and read as 0.
    assert 0 < result.frames_per_subscriber <= 30  # every subscriber asserted full content


@pytest.mark.parametrize("target", ["server", "socketio"])
def test_fanout_across_two_replicas_delivers_everything(target: str) -> None:
    from load.fanout import FanoutParams, run

    params = FanoutParams(subscribers=20, messages=20, size=50, timeout_s=60, replicas=2)
    result = run(target, params)
    assert result.replicas == 2
    assert result.deliveries_per_s > 0
