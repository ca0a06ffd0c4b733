"""A takeover's fallback from the portal: the project's latest export, fetched only when a cell needs it.

The expert server asks its fallback for a cell only when no live replica holds that cell
(`node_agent.moe.server.replicas`). The first such ask downloads the project's newest export into the
agent's data directory (`PortalClient.fetch_export`: size cap, sha256, safetensors layout, deadline);
every later ask of the same server reads that file. A portal with no export, a refusal or a broken file
leaves the cells on their initial weights, as before, with one line saying why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from node_agent.identity import Identity
from node_agent.portal.client import PortalClient, PortalError

logger = logging.getLogger(__name__)

#: File name of the downloaded export inside ``<data dir>/exports/<project>/``.
LATEST_EXPORT_FILE = "latest.safetensors"

PortalFallback = Callable[[str], Awaitable[Any]]


def portal_export_fallback(
    client: PortalClient,
    identity: Identity,
    credential: Callable[[], str],
    project: str,
    directory: Path,
    say: Callable[[str], None],
) -> PortalFallback:
    """A `moe.server.replicas.Fallback` that downloads the latest export on its first call."""
    lock = asyncio.Lock()
    loaded: list[PortalFallback | None] = []

    async def load() -> PortalFallback | None:
        from node_agent.training.export import export_fallback  # imports torch

        path = directory / LATEST_EXPORT_FILE
        try:
            sha256 = await asyncio.to_thread(client.fetch_export, identity, credential(), project, path)
        except PortalError as exc:
            say(f"could not download the project's last export ({exc}); cells without a replica start fresh")
            return None
        if sha256 is None:
            say("no live replica and the project has no export yet: those cells start from initial weights")
            return None
        say(f"downloaded the project's last export {sha256[:12]} to start cells no live replica holds")
        inner: PortalFallback = export_fallback(path)
        return inner

    async def fallback(uid: str) -> Any:
        async with lock:
            if not loaded:
                loaded.append(await load())
        inner = loaded[0]
        return None if inner is None else await inner(uid)

    return fallback
