"""Expert server: backends (module + optimiser), batching runtime, announcements, checkpoints.

`ExpertServer.create(...)` in `node_agent.moe.server.server` ties them together.
"""

from __future__ import annotations
