"""RPC handlers that connection-pool tests serve."""

from __future__ import annotations

import asyncio
from typing import Any


async def echo(method: str, body: Any) -> Any:
    """`slow` never answers in time; anything else is answered with the request body."""
    if method == "slow":
        await asyncio.sleep(30)
    return body
