from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture
def bootstrap_process():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node_agent",
            "bootstrap",
            "--listen",
            "127.0.0.1:0",
            "--ephemeral",
            "--any-namespace",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def node_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node_agent", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_bootstrap_prints_an_address_that_dht_put_and_get_accept(bootstrap_process) -> None:
    address = bootstrap_process.stdout.readline().strip()
    assert address.startswith("127.0.0.1:") and len(address.split("/")[1]) == 40
    put = node_agent(
        "dht", "put", "cli-key", '{"x": [1, 2]}', "--initial-peers", address, "--listen", "127.0.0.1:0"
    )
    assert put.returncode == 0, put.stdout + put.stderr
    assert json.loads(put.stdout)["stored"] is True
    get = node_agent(
        "dht", "get", "cli-key", "--latest", "--initial-peers", address, "--listen", "127.0.0.1:0"
    )
    assert get.returncode == 0, get.stdout + get.stderr
    assert json.loads(get.stdout)["None"]["value"] == {"x": [1, 2]}


def test_dht_get_reports_unreachable_peers() -> None:
    result = node_agent(
        "dht", "get", "k", "--initial-peers", "127.0.0.1:9", "--listen", "127.0.0.1:0", "--timeout", "0.5"
    )
    assert result.returncode == 1 and "none of the 1 initial peers answered" in result.stdout
