"""Mixture-of-experts over the swarm: expert servers (`server/`), trainer-side callers (`client`), uid grid.

The contract between the expert side and the trainer side is `node_agent.moe.api`.
"""

from __future__ import annotations
