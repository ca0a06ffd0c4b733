"""Local swarm launcher: a bootstrap node, expert servers covering a grid and optionally a trainer, as real
OS processes on this machine (`node-agent swarm`, the README's quick start, end-to-end tests, benchmarks).

`LocalSwarm` (in `launcher`) is the Python API; `plan` splits a grid between servers (pure).
"""

from __future__ import annotations
