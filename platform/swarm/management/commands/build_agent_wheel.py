"""`manage.py build_agent_wheel`: build the node agent wheel the portal serves (deploy time, dev setup)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from swarm.wheel import WheelBuildError, build_agent_wheel


class Command(BaseCommand):
    help = "Build colearn_node_agent-<version>-py3-none-any.whl from node_agent/ into AGENT_WHEEL_DIR."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            wheel = build_agent_wheel()
        except WheelBuildError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{wheel.path}\nsha256 {wheel.sha256}")
