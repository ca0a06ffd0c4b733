"""Read credit: leaderboards of users (per project or overall) and host rows, with RAC at `now`.

Credit is shown in GFLOPs (10**9 floating-point operations the portal priced). A user appears under their
display name only if their `CreditProfile` says so; otherwise as "anonymous" (the id stays, so stats sites
can follow a volunteer without learning who they are).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from credit import rac
from credit.models import CreditProfile, NodeCredit
from projects.models import Project

GFLOP = 1e9
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class UserCredit:
    user_id: int
    name: str
    total_credit: float
    recent_average_credit: float


@dataclass(frozen=True, slots=True)
class HostCredit:
    node_id: str
    user_id: int
    project: str
    total_credit: float
    recent_average_credit: float


def _rows(project: Project | None):  # -> QuerySet[NodeCredit]
    rows = NodeCredit.objects.select_related("node__project", "node__user")
    return rows.filter(node__project=project) if project is not None else rows


def user_leaderboard(*, project: Project | None, now: datetime, limit: int = 100) -> list[UserCredit]:
    """Users by total credit (ties: RAC), summed over their nodes (in `project`, or everywhere)."""
    totals: dict[int, list[float]] = {}
    names: dict[int, str] = {}
    for row in _rows(project):
        entry = totals.setdefault(row.node.user_id, [0.0, 0.0])
        entry[0] += row.total / GFLOP
        entry[1] += rac.rac(row.recent, (now - row.recent_at).total_seconds()) / GFLOP
        names[row.node.user_id] = row.node.user.display_name
    public = set(
        CreditProfile.objects.filter(user_id__in=totals, public_name=True).values_list("user_id", flat=True)
    )
    board = [
        UserCredit(user_id, names[user_id] if user_id in public else ANONYMOUS, round(t, 3), round(r, 3))
        for user_id, (t, r) in totals.items()
    ]
    board.sort(key=lambda u: (-u.total_credit, -u.recent_average_credit, u.user_id))
    return board[:limit]


@dataclass(frozen=True, slots=True)
class TeamCredit:
    team_id: int
    name: str
    members: int
    total_credit: float
    recent_average_credit: float


def team_leaderboard(*, project: Project | None, now: datetime, limit: int = 100) -> list[TeamCredit]:
    """Teams by their current members' credit (summing the user leaderboard, so the two always agree)."""
    users = {u.user_id: u for u in user_leaderboard(project=project, now=now, limit=10**9)}
    from credit.models import Team

    board = []
    for team in Team.objects.all():
        member_ids = list(CreditProfile.objects.filter(team=team).values_list("user_id", flat=True))
        rows = [users[i] for i in member_ids if i in users]
        total = round(sum(u.total_credit for u in rows), 3)
        recent = round(sum(u.recent_average_credit for u in rows), 3)
        board.append(TeamCredit(team.pk, team.name, len(member_ids), total, recent))
    board.sort(key=lambda t: (-t.total_credit, -t.recent_average_credit, t.team_id))
    return board[:limit]


def host_credit(*, now: datetime) -> list[HostCredit]:
    """Every node with credit (BOINC's hosts), in node order."""
    return [
        HostCredit(
            node_id=row.node.node_id,
            user_id=row.node.user_id,
            project=row.node.project.slug,
            total_credit=round(row.total / GFLOP, 3),
            recent_average_credit=round(
                rac.rac(row.recent, (now - row.recent_at).total_seconds()) / GFLOP, 3
            ),
        )
        for row in _rows(None).order_by("node_id")
    ]


@dataclass(frozen=True, slots=True)
class NodeCreditRow:
    node_id: str
    project_slug: str
    project_title: str
    total_credit: float
    recent_average_credit: float
    daily: list[float]


def user_nodes_credit(*, user_id: int, now: datetime, days: int = 30) -> list[NodeCreditRow]:
    """A user's nodes with credit: totals, RAC and credit per day over the last `days` (oldest first)."""
    from credit.models import WorkReceipt

    rows = list(_rows(None).filter(node__user_id=user_id).order_by("node__project_id", "node_id"))
    first_minute = int(now.timestamp() // 60) - days * 1440
    daily: dict[int, list[float]] = {row.node_id: [0.0] * days for row in rows}
    receipts = WorkReceipt.objects.filter(server_id__in=daily, minute__gte=first_minute)
    for server_id, minute, flops in receipts.values_list("server_id", "minute", "flops"):
        day = min(days - 1, (minute - first_minute) // 1440)
        daily[server_id][day] += flops / GFLOP
    return [
        NodeCreditRow(
            node_id=row.node.node_id,
            project_slug=row.node.project.slug,
            project_title=row.node.project.title,
            total_credit=round(row.total / GFLOP, 3),
            recent_average_credit=round(
                rac.rac(row.recent, (now - row.recent_at).total_seconds()) / GFLOP, 3
            ),
            daily=daily[row.node_id],
        )
        for row in rows
    ]


def shows_name(user_id: int) -> bool:
    return CreditProfile.objects.filter(user_id=user_id, public_name=True).exists()
