"""Smoke run of `benchmarks/bench_adversarial.py`: every attack is played and the report is complete.

Short phases and small counts (about a minute): it checks that the benchmark still drives the real victims
as the code changes, not the victims' figures (those are the benchmark's job).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[2]
ATTACKS = {
    "quiet_baseline",
    "rtc_malformed_tensors",
    "rtc_unfinished_messages",
    "rtc_offer_flood",
    "portal_nested_json",
    "portal_huge_ts",
    "portal_counter_overflow",
    "portal_anonymous_access",
    "portal_huge_grid",
    "dht_replay_remap",
    "dht_restore_one_record",
    "dht_store_flood_rotating_ports",
    "dht_forged_revocations",
    "dht_bad_contact_hosts",
    "dht_withdrawal_flood",
}

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(420)
def test_bench_adversarial_plays_every_attack_and_reports_the_targets() -> None:
    command = [
        sys.executable, "benchmarks/bench_adversarial.py", "--phase-seconds", "1", "--settle", "0.5",
        "--scale", "0.05", "--grid", "8x8", "--grid-requests", "1",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)

    for key in ("honest_success_rate", "victim_rss_growth_mb", "portal_5xx", "crashed_processes"):
        assert isinstance(report[key], int | float), (key, report[key])
    assert set(report["targets_met"]) == {
        "honest_success_rate>=0.99", "victim_rss_growth_mb<100", "portal_5xx==0", "crashed_processes==0"
    }  # fmt: skip
    assert set(report["attacks"]) == ATTACKS
    for name, attack in report["attacks"].items():
        assert "attack_error" not in attack["notes"], (name, attack["notes"])
        if name not in ("quiet_baseline", "dht_bad_contact_hosts"):  # the latter counts lookups it served
            assert attack["sent"] > 0, (name, attack)
    baseline = report["attacks"]["quiet_baseline"]
    assert baseline["honest_ok"] > 0, baseline  # the honest trainer works before any attack
    assert report["attacks"]["portal_nested_json"]["notes"]["status_by_endpoint"].keys() == {
        "join", "renew", "heartbeat", "metrics"
    }  # fmt: skip
