"""Who may watch a project's live swarm. Checked once, when the socket connects.

Public projects (open to anyone, not a draft) may be watched by anyone, signed in or not. A project that
needs the owner's approval to join is private to its members: the owner, staff, and volunteers with an
approved node in it. Drafts are visible to their owner and staff only, as everywhere in the portal.
"""

from __future__ import annotations

from projects.lifecycle import ProjectStatus
from projects.models import JoinPolicy, Project
from projects.permissions import AnyUser, can_manage_project
from swarm.models import Node, NodeState


def is_public(project: Project) -> bool:
    return project.status != ProjectStatus.DRAFT and project.join_policy == JoinPolicy.OPEN


def is_member(user: AnyUser, project: Project) -> bool:
    if not user.is_authenticated:
        return False
    return (
        Node.objects.filter(project=project, user_id=user.pk)
        .exclude(state__in=[NodeState.PENDING, NodeState.BANNED])
        .exists()
    )


def can_watch_swarm(user: AnyUser, project: Project) -> bool:
    if can_manage_project(user, project):  # owner or staff
        return True
    if project.status == ProjectStatus.DRAFT:
        return False
    return is_public(project) or is_member(user, project)
