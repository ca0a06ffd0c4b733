"""Daphne on uvloop: `python -m live.serve <daphne arguments>` (the same arguments as `daphne`).

Daphne runs Twisted on an asyncio loop that it creates when `daphne.server` is imported. Every message
to a WebSocket viewer costs that loop a writer registration, a readiness callback and a send; with
hundreds of viewers of one swarm that per-message overhead is most of a portal process's work, and
uvloop does it in C. So the policy is set before Daphne's import creates its loop; without uvloop
installed this is plain Daphne.
"""

from __future__ import annotations

import asyncio
import logging
import sys

logger = logging.getLogger(__name__)


def use_uvloop() -> bool:
    """Make new event loops uvloop ones; False (and plain asyncio) where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main() -> None:
    if "daphne.server" in sys.modules:
        raise RuntimeError("live.serve must run before daphne.server is imported")
    fast = use_uvloop()
    from daphne.cli import CommandLineInterface

    logger.info("serving with %s", "uvloop" if fast else "the default asyncio loop")
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
