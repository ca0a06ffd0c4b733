"""Who may see what of a project's swarm: one rule per resource, used by the pages, the API and the live
socket alike, so no door is more open than another.

* **The swarm** (dashboard page, `/api/v1/projects/<slug>/swarm` and `/nodes`, the live socket): open
  projects (anyone may join, not a draft) are public, signed in or not. A project that needs the owner's
  approval is private to its members: the owner, staff, and volunteers with an approved (not pending,
  not banned) node in it. Drafts: owner and staff only, as everywhere in the portal.
* **A node's private details** (its endpoint, i.e. the volunteer's IP address, and its platform): only the
  volunteer who owns the node and staff. The project owner approves and bans nodes without them.
"""

from __future__ import annotations

from projects.lifecycle import ProjectStatus
from projects.models import JoinPolicy, Project
from projects.permissions import AnyUser, can_manage_project
from swarm.models import Node, NodeState


def is_public_swarm(project: Project) -> bool:
    return project.status != ProjectStatus.DRAFT and project.join_policy == JoinPolicy.OPEN


def is_swarm_member(user: AnyUser, project: Project) -> bool:
    """A volunteer with an approved node in the project (one query)."""
    if not user.is_authenticated:
        return False
    return (
        Node.objects.filter(project=project, user_id=user.pk)
        .exclude(state__in=[NodeState.PENDING, NodeState.BANNED])
        .exists()
    )


def can_view_swarm(user: AnyUser, project: Project) -> bool:
    """The one rule for a project's swarm: its page, its read-only API and its live socket."""
    if can_manage_project(user, project):  # owner or staff
        return True
    if project.status == ProjectStatus.DRAFT:
        return False
    return is_public_swarm(project) or is_swarm_member(user, project)


def can_see_node_private(user: AnyUser, node: Node) -> bool:
    """Endpoint (IP address) and platform of a node: its volunteer and staff only."""
    return bool(user.is_authenticated and (user.is_staff or node.user_id == user.pk))
