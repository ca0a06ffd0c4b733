"""Helpers for tests that start real processes (Daphne, Celery workers, agents)."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen, *, timeout: float = 15, sig: int = signal.SIGTERM) -> None:
    """Ask `process` to stop (SIGTERM by default); kill it if it has not exited after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
