"""Daphne on uvloop: `python -m live.serve <daphne arguments>` (the same arguments as `daphne`).

Daphne runs Twisted on an asyncio loop that it creates when `daphne.server` is imported. Every message
to a WebSocket viewer costs that loop a writer registration, a readiness callback and a send; with
hundreds of viewers of one swarm that per-message overhead is most of a portal process's work, and
uvloop does it in C. So the policy is set before Daphne's import creates its loop; without uvloop
installed this is plain Daphne.

For many viewers it also makes each message cheaper (live.daphne_tuning: writes sent at once, no
formatting of autobahn debug messages that nobody logs) and lets a WebSocket handshake take
`--websocket_connect_timeout` 20 s rather than Daphne's command-line 5 s: past it Daphne answers a bare
403, which a browser cannot tell from a refusal (an explicit value on the command line wins).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from live import daphne_tuning

logger = logging.getLogger(__name__)

DEFAULTS = {"--websocket_connect_timeout": "20"}


def use_uvloop() -> bool:
    """Make new event loops uvloop ones; False (and plain asyncio) where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def with_defaults(argv: list[str]) -> list[str]:
    """Daphne's arguments with this module's defaults added where the caller gave none."""
    given = {arg.split("=", 1)[0] for arg in argv}
    extra = [arg for name, value in DEFAULTS.items() if name not in given for arg in (name, value)]
    return [*extra, *argv]


def main() -> None:
    if "daphne.server" in sys.modules:
        raise RuntimeError("live.serve must run before daphne.server is imported")
    fast = use_uvloop()
    daphne_tuning.send_writes_at_once()
    daphne_tuning.plain_autobahn_debug_messages()
    from daphne.cli import CommandLineInterface

    logger.info("serving with %s", "uvloop" if fast else "the default asyncio loop")
    CommandLineInterface().run(with_defaults(sys.argv[1:]))


if __name__ == "__main__":
    main()
