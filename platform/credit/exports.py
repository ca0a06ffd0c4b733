"""Daily stats export for third-party stats sites: JSON, and BOINC-style gzipped XML (user, team, host.gz).

Written by the `credit-stats-export` beat task into `settings.CREDIT_STATS_DIR` (atomically: a reader never
sees half a file) and served by `GET /api/v1/credit/stats/<file>`. Same numbers as the leaderboard
(`credit.selectors`), in GFLOPs; `expavg_credit` is the RAC (one-week half-life), `expavg_time` the export's
unix time. Names follow each volunteer's privacy choice.
"""

from __future__ import annotations

import gzip
import json
import os
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from credit.selectors import (
    HostCredit,
    TeamCredit,
    UserCredit,
    host_credit,
    team_leaderboard,
    user_leaderboard,
)

FILES = ("user.json", "team.json", "host.json", "user.gz", "team.gz", "host.gz")


def users_xml(users: list[UserCredit], now: datetime) -> str:
    lines = ["<users>"]
    for user in users:
        lines.append(
            f"<user><id>{user.user_id}</id><name>{escape(user.name)}</name>"
            f"<total_credit>{user.total_credit}</total_credit>"
            f"<expavg_credit>{user.recent_average_credit}</expavg_credit>"
            f"<expavg_time>{now.timestamp():.0f}</expavg_time></user>"
        )
    lines.append("</users>")
    return "\n".join(lines) + "\n"


def teams_xml(teams: list[TeamCredit], now: datetime) -> str:
    lines = ["<teams>"]
    for team in teams:
        lines.append(
            f"<team><id>{team.team_id}</id><name>{escape(team.name)}</name><nusers>{team.members}</nusers>"
            f"<total_credit>{team.total_credit}</total_credit>"
            f"<expavg_credit>{team.recent_average_credit}</expavg_credit>"
            f"<expavg_time>{now.timestamp():.0f}</expavg_time></team>"
        )
    lines.append("</teams>")
    return "\n".join(lines) + "\n"


def hosts_xml(hosts: list[HostCredit], now: datetime) -> str:
    lines = ["<hosts>"]
    for host in hosts:
        lines.append(
            f"<host><id>{host.node_id}</id><userid>{host.user_id}</userid>"
            f"<project>{escape(host.project)}</project><total_credit>{host.total_credit}</total_credit>"
            f"<expavg_credit>{host.recent_average_credit}</expavg_credit>"
            f"<expavg_time>{now.timestamp():.0f}</expavg_time></host>"
        )
    lines.append("</hosts>")
    return "\n".join(lines) + "\n"


def stats_export(*, directory: Path, now: datetime) -> dict[str, int]:
    """Write every file; returns the rows written per kind."""
    users = user_leaderboard(project=None, now=now, limit=10**9)
    hosts = host_credit(now=now)
    teams = team_leaderboard(project=None, now=now, limit=10**9)
    stamp = now.timestamp()
    contents = {
        "user.json": json.dumps(
            {"exported_at": stamp, "unit": "GFLOP", "users": [_user(u) for u in users]}
        ).encode(),
        "host.json": json.dumps(
            {"exported_at": stamp, "unit": "GFLOP", "hosts": [_host(h) for h in hosts]}
        ).encode(),
        "team.json": json.dumps(
            {"exported_at": stamp, "unit": "GFLOP", "teams": [_team(t) for t in teams]}
        ).encode(),
        "user.gz": gzip.compress(users_xml(users, now).encode(), mtime=0),
        "team.gz": gzip.compress(teams_xml(teams, now).encode(), mtime=0),
        "host.gz": gzip.compress(hosts_xml(hosts, now).encode(), mtime=0),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        partial = directory / f".{name}.partial"
        partial.write_bytes(data)
        os.replace(partial, directory / name)
    return {"users": len(users), "teams": len(teams), "hosts": len(hosts)}


def _user(user: UserCredit) -> dict[str, object]:
    return {
        "id": user.user_id, "name": user.name, "total_credit": user.total_credit,
        "expavg_credit": user.recent_average_credit,
    }  # fmt: skip


def _team(team: TeamCredit) -> dict[str, object]:
    return {
        "id": team.team_id, "name": team.name, "nusers": team.members, "total_credit": team.total_credit,
        "expavg_credit": team.recent_average_credit,
    }  # fmt: skip


def _host(host: HostCredit) -> dict[str, object]:
    return {
        "id": host.node_id, "userid": host.user_id, "project": host.project,
        "total_credit": host.total_credit, "expavg_credit": host.recent_average_credit,
    }  # fmt: skip
