"""`manage.py observe_swarm`: the long-running swarm observer (a service of its own in docker/)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Join each active project's DHT as a client, probe the announced nodes' experts with real info calls "
        "over WebRTC, and reconcile what is announced and served with heartbeats."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--interval", type=float, default=float(settings.SWARM["OBSERVE_INTERVAL"]))
        parser.add_argument(
            "--listen", default="0.0.0.0:0", help="UDP HOST:PORT of the observer's DHT client"
        )
        parser.add_argument("--once", action="store_true", help="observe every project once, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        asyncio.run(self._run(options))

    async def _run(self, options: dict[str, Any]) -> None:
        from swarm.keys import portal_identity
        from swarm.observer import SwarmObserver

        identity = portal_identity()
        observer = SwarmObserver(identity, listen=options["listen"])
        self.stdout.write(
            f"swarm observer {identity.node_id.hex()} (portal key), every {options['interval']}s"
        )
        try:
            if options["once"]:
                for slug, changes in (await observer.run_round()).items():
                    self.stdout.write(f"{slug}: {len(changes)} state change(s)")
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await observer.run(interval=options["interval"], stop=stop)
        finally:
            await observer.shutdown()
