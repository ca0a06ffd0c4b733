"""Writes about swarms: join codes, credentials, approvals, bans and node state changes.

Agent-facing services raise a swarm.errors refusal (its kind, a code, a detail; no HTTP status) and run
in one transaction, so a refused request leaves nothing behind. Each change a page shows is broadcast
to `swarm.<slug>` on commit.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from accounts.models import User
from node_agent.identity import Identity, node_id_from_public_key
from node_agent.portal.errors import CredentialError
from node_agent.portal.ice import TurnGrant, issue_turn_grant
from node_agent.portal.schemas import (
    JoinedNode,
    JoinReply,
    JoinRequest,
    PendingReply,
    RenewReply,
    RenewRequest,
)
from node_agent.portal.tokens import Credential, issue_credential, peek_credential, verify_credential
from projects.lifecycle import ProjectStatus
from projects.models import JoinPolicy, Project
from projects.permissions import can_manage_project, can_view_project
from swarm import selectors
from swarm.codes import code_hash, new_code
from swarm.errors import Conflict, Expired, InvalidRequest, NotAuthenticated, NotPermitted
from swarm.events import announce_node
from swarm.keys import portal_identity
from swarm.models import (
    CodePurpose,
    IssuedCredential,
    JoinCode,
    Node,
    NodeState,
    NodeStateChange,
    SeenNonce,
    UserBan,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    cid: str
    expires_at: float


# ---- node state -------------------------------------------------------------------------------------------


def node_set_state(*, node: Node, state: str, reason: str, now: datetime) -> bool:
    """Move a node to `state`, recording the change with its time; False if it was already there."""
    if node.state == state:
        return False
    NodeStateChange.objects.create(node=node, previous=node.state, state=state, reason=reason[:200], at=now)
    logger.info("node %s in %s: %s -> %s (%s)", node.short_id, node.project_id, node.state, state, reason)
    node.state, node.state_changed_at, node.state_reason = state, now, reason[:200]
    node.save(update_fields=["state", "state_changed_at", "state_reason"])
    announce_node(node, node.project.slug)
    return True


# ---- join codes and credentials -------------------------------------------------------------------------


def join_code_create(
    *, project: Project, user: User, now: datetime, purpose: str = CodePurpose.JOIN
) -> tuple[JoinCode, str]:
    """A one-time code for `user` to join `project` with one node (a server from the Join page, or the
    owner's trainer from the Train page); returns the row and the plain code."""
    if project.status != ProjectStatus.ACTIVE or not can_view_project(user, project):
        raise PermissionDenied("This project is not accepting volunteers.")
    if purpose == CodePurpose.TRAIN and not can_manage_project(user, project):
        raise PermissionDenied("Only the project's owner trains it.")
    if UserBan.objects.filter(user=user).exists():
        raise PermissionDenied("Your account may not join swarms.")
    code = new_code()
    ttl = timedelta(seconds=settings.SWARM["JOIN_CODE_TTL"])
    row = JoinCode.objects.create(
        project=project,
        user=user,
        purpose=purpose,
        code_hash=code_hash(code),
        created_at=now,
        expires_at=now + ttl,
    )
    logger.info("%s code for %s created for user %s", purpose, project.slug, user.pk)
    return row, code


#: What a spent code's check says, per purpose: how to restart instead (the saved credential does it).
CODE_USED_DETAIL: dict[str, str] = {
    CodePurpose.JOIN: "this join code was already used; to restart a node that joined with it, run "
    "`node-agent join PORTAL_URL` without a code; for another node, create a new command",
    CodePurpose.TRAIN: "this code was already used; to restart the trainer that used it, run "
    "`node-agent train --portal PORTAL_URL` without a code; for another trainer, create a new command",
}


def join_code_check(*, code: str, now: datetime) -> JoinCode:
    """The code's row if a node could join with it now, else the refusal `agent_join` would give.

    The Join page's command calls this before installing anything, so a used or expired code costs the
    volunteer a second, not a PyTorch download. A usable code then stays valid for JOIN_CODE_INSTALL_GRACE
    after the check (never beyond that past its first expiry), so a slow install does not lose it; it stays
    one-time.
    """
    row = JoinCode.objects.select_related("project").filter(code_hash=code_hash(code)).first()
    if row is None:
        raise InvalidRequest("invalid_code", "no such join code; copy the command again")
    if row.used_at is not None:
        raise Conflict("code_used", CODE_USED_DETAIL[row.purpose])
    if row.expires_at <= now and row.node_id is None:
        raise Expired("code_expired", "this join code expired; open the Join page again")
    if row.project.status != ProjectStatus.ACTIVE:
        raise Conflict("project_not_active", f"project {row.project.slug} is {row.project.status}")
    grace = timedelta(seconds=settings.SWARM["JOIN_CODE_INSTALL_GRACE"])
    ttl = timedelta(seconds=settings.SWARM["JOIN_CODE_TTL"])
    extended = min(now + grace, row.created_at + ttl + grace)
    if row.node_id is None and extended > row.expires_at:
        JoinCode.objects.filter(pk=row.pk, used_at__isnull=True).update(expires_at=extended)
        row.expires_at = extended
    return row


def nonce_record(*, public_key: bytes, nonce: str, now: datetime) -> None:
    """Remember a signed body's nonce; a second use is a replay. Call inside the request's transaction."""
    try:
        with transaction.atomic():
            SeenNonce.objects.create(public_key=public_key.hex(), nonce=nonce.lower(), seen_at=now)
    except IntegrityError:
        raise Conflict("replayed", "this signed body was already received") from None


def _credential_issue(*, node: Node, now: datetime) -> IssuedToken:
    cid = secrets.token_hex(16)
    ttl = float(settings.SWARM["CREDENTIAL_TTL"])
    token = issue_credential(
        portal_identity(),
        cid=cid,
        project=node.project.slug,
        user=node.user_id,
        node_public_key=bytes.fromhex(node.public_key),
        now=now.timestamp(),
        ttl=ttl,
    )
    expires = now + timedelta(seconds=ttl)
    IssuedCredential.objects.create(cid=cid, node=node, issued_at=now, expires_at=expires)
    return IssuedToken(token, cid, expires.timestamp())


def _refuse_if_banned(node: Node) -> None:
    if node.state == NodeState.BANNED:
        raise NotPermitted("banned", "this node is banned from the project")
    if UserBan.objects.filter(user_id=node.user_id).exists():
        raise NotPermitted("banned", "this node's owner is banned")


def agent_join(
    *, public_key: bytes, request: JoinRequest, now: datetime, portal_url: str
) -> JoinReply | PendingReply:
    """Trade a join code (signed by the node key) for a credential, or a `pending_approval` answer."""
    with transaction.atomic():
        nonce_record(public_key=public_key, nonce=request.nonce, now=now)
        code = (
            JoinCode.objects.select_for_update(of=("self",))
            .select_related("project", "user", "node")
            .filter(code_hash=code_hash(request.code))
            .first()
        )
        if code is None:
            raise InvalidRequest("invalid_code", "no such join code; copy the command again")
        if code.used_at is not None:
            raise Conflict("code_used", "this join code was already used")
        bound = code.node
        if bound is not None and bound.public_key != public_key.hex():
            raise Conflict("code_used", "this join code belongs to another node")
        # A code the node already presented while awaiting approval stays valid for that node.
        if code.expires_at <= now and bound is None:
            raise Expired("code_expired", "this join code expired; open the Join page again")
        project = code.project
        if project.status != ProjectStatus.ACTIVE:
            raise Conflict("project_not_active", f"project {project.slug} is {project.status}")
        node, created = Node.objects.get_or_create(
            project=project,
            public_key=public_key.hex(),
            defaults={"user": code.user, "node_id": node_id_from_public_key(public_key).hex()},
        )
        if node.user_id != code.user_id:
            raise NotPermitted("foreign_node", "this node key is registered to another account")
        _refuse_if_banned(node)
        node.agent_version, node.platform = request.agent_version, request.platform
        node.save(update_fields=["agent_version", "platform"])
        if created:
            NodeStateChange.objects.create(node=node, previous="", state=node.state, reason="joined", at=now)
        needs_approval = project.join_policy == JoinPolicy.APPROVAL and node.approved_at is None
        if needs_approval and can_manage_project(code.user, project):
            # The owner's own trainer (or server) is not held for the owner's own approval.
            node.approved_at = now
            node.save(update_fields=["approved_at"])
        elif needs_approval:
            node_set_state(
                node=node, state=NodeState.PENDING, reason="waiting for the owner's approval", now=now
            )
            code.node = node
            code.save(update_fields=["node"])
            why = "the project owner must approve this node"
            return PendingReply(status="pending_approval", detail=why)
        moved = node.state == NodeState.PENDING and node_set_state(
            node=node, state=NodeState.REGISTERED, reason="approved", now=now
        )
        if not moved:  # the dashboard shows a node from its join on, not only from its first heartbeat
            announce_node(node, project.slug)
        issued = _credential_issue(node=node, now=now)
        code.used_at, code.node = now, node
        code.save(update_fields=["used_at", "node"])
        config = selectors.project_config(project=project, portal_url=portal_url, now=now)
    logger.info("node %s joined %s (user %s)", node.short_id, project.slug, node.user_id)
    joined = JoinedNode(node_id=node.node_id, state=node.state, project=project.slug)
    turn = turn_grant(node=node, now=now)
    return JoinReply(
        credential=issued.token, expires_at=issued.expires_at, node=joined, config=config, turn=turn
    )


def agent_renew(*, public_key: bytes, request: RenewRequest, now: datetime) -> RenewReply:
    """A fresh credential for a node holding a valid (or recently expired) one; refused if banned/revoked."""
    with transaction.atomic():
        nonce_record(public_key=public_key, nonce=request.nonce, now=now)
        credential = verify_credential_for(token=request.credential, public_key=public_key, now=now)
        issued_row = (
            IssuedCredential.objects.select_related("node", "node__project")
            .filter(cid=credential.cid)
            .first()
        )
        if issued_row is None:
            raise NotAuthenticated("unknown_credential", "this portal has no record of the credential")
        node = issued_row.node
        if issued_row.revoked_at is not None:
            raise NotPermitted("revoked", "this credential was revoked")
        _refuse_if_banned(node)
        if node.project.status != ProjectStatus.ACTIVE:
            raise Conflict("project_not_active", f"project is {node.project.status}")
        issued = _credential_issue(node=node, now=now)
    return RenewReply(
        credential=issued.token, expires_at=issued.expires_at, turn=turn_grant(node=node, now=now)
    )


def turn_grant(*, node: Node, now: datetime) -> TurnGrant | None:
    """A short-lived TURN credential for `node` (coturn REST scheme), or None when no TURN is configured.

    Only join and renew call this: both verified the node's signature and its code or credential first."""
    return _turn_grant_for(node.node_id, now=now.timestamp())


def _turn_grant_for(node_id_hex: str, *, now: float) -> TurnGrant | None:
    if not (settings.ICE_TURN_URLS and settings.ICE_TURN_SECRET):
        return None
    return issue_turn_grant(settings.ICE_TURN_SECRET, node_id_hex, now=now, ttl=float(settings.ICE_TURN_TTL))


def observer_turn_grant(identity: Identity, *, now: float) -> TurnGrant | None:
    """The swarm observer's own TURN credential (it probes nodes behind NATs as a trainer would)."""
    return _turn_grant_for(identity.node_id.hex(), now=now)


def verify_credential_for(
    *, token: str, public_key: bytes, now: datetime, allow_grace: bool = True
) -> Credential:
    """Verify a token against the portal key and the signing node; expired ones pass within the grace."""
    portal_key = portal_identity().public_key_bytes
    try:
        return verify_credential(
            token, portal_public_key=portal_key, now=now.timestamp(), node_public_key=public_key
        )
    except CredentialError as exc:
        if exc.reason != "expired" or not allow_grace:
            refusal = NotPermitted if exc.reason == "revoked" else NotAuthenticated
            raise refusal(f"credential_{exc.reason}", exc.detail) from None
        # The signature held (it is checked before expiry); allow renewal for a while after expiry.
        credential = peek_credential(token)
        if now.timestamp() - credential.expires_at > settings.SWARM["RENEW_GRACE"]:
            raise NotAuthenticated("credential_expired", exc.detail) from None
        if credential.node_public_key != public_key:
            raise NotAuthenticated("credential_wrong_node", "issued to another node key") from None
        return credential


# ---- owner and admin actions ----------------------------------------------------------------------------


def node_approve(*, node: Node, actor: User, now: datetime) -> Node:
    if not can_manage_project(actor, node.project):
        raise PermissionDenied("Only the project's owner or an admin can approve nodes.")
    with transaction.atomic():
        node = Node.objects.select_for_update().select_related("project").get(pk=node.pk)
        if node.state != NodeState.PENDING:
            return node
        node.approved_at = now
        node.save(update_fields=["approved_at"])
        node_set_state(
            node=node, state=NodeState.REGISTERED, reason=f"approved by {actor.display_name}", now=now
        )
    return node


def node_ban(*, node: Node, actor: User, reason: str, now: datetime) -> Node:
    """Ban a node: its credentials are revoked (published in the DHT by the observer), telemetry refused."""
    if not can_manage_project(actor, node.project):
        raise PermissionDenied("Only the project's owner or an admin can ban nodes.")
    with transaction.atomic():
        node = Node.objects.select_for_update().select_related("project").get(pk=node.pk)
        IssuedCredential.objects.filter(node=node, revoked_at__isnull=True).update(revoked_at=now)
        node_set_state(
            node=node, state=NodeState.BANNED, reason=reason or f"banned by {actor.display_name}", now=now
        )
    return node


def node_unban(*, node: Node, actor: User, now: datetime) -> Node:
    """Lift a node's ban (admins only). It goes offline: its revoked credentials stay revoked, so its agent
    joins again with a new code and gets a fresh credential. A node of a banned user stays banned."""
    if not actor.is_staff:
        raise PermissionDenied("Only admins can unban nodes.")
    with transaction.atomic():
        node = Node.objects.select_for_update().select_related("project").get(pk=node.pk)
        if node.state != NodeState.BANNED:
            return node
        if UserBan.objects.filter(user_id=node.user_id).exists():
            raise Conflict("user_banned", "this node's owner is banned from every swarm; lift that ban first")
        node_set_state(
            node=node, state=NodeState.OFFLINE, reason=f"unbanned by {actor.display_name}", now=now
        )
    return node


#: The state reason of a node banned because its owner was: `user_unban` lifts exactly these node bans.
USER_BAN_REASON = "owner banned"


def user_ban(*, user: User, actor: User, reason: str, now: datetime) -> int:
    """Ban a user from every swarm (admins only): all their nodes are banned, new codes refused."""
    if not actor.is_staff:
        raise PermissionDenied("Only admins can ban users.")
    why = f"{USER_BAN_REASON}: {reason}" if reason else USER_BAN_REASON
    with transaction.atomic():
        UserBan.objects.update_or_create(user=user, defaults={"reason": reason, "banned_at": now})
        nodes = list(Node.objects.select_related("project").filter(user=user).exclude(state=NodeState.BANNED))
        for node in nodes:
            IssuedCredential.objects.filter(node=node, revoked_at__isnull=True).update(revoked_at=now)
            node_set_state(node=node, state=NodeState.BANNED, reason=why, now=now)
    return len(nodes)


def user_unban(*, user: User, actor: User, now: datetime) -> int:
    """Lift a user's ban from every swarm (admins only); returns how many of their nodes were unbanned.

    The nodes that the user ban banned go offline (their credentials stay revoked: each agent joins again
    with a new code); a node banned on its own before stays banned until staff unban it.
    """
    if not actor.is_staff:
        raise PermissionDenied("Only admins can unban users.")
    with transaction.atomic():
        if not UserBan.objects.filter(user=user).delete()[0]:
            return 0
        nodes = Node.objects.select_related("project").filter(
            user=user, state=NodeState.BANNED, state_reason__startswith=USER_BAN_REASON
        )
        unbanned = 0
        for node in nodes:
            reason = f"owner unbanned by {actor.display_name}"
            unbanned += node_set_state(node=node, state=NodeState.OFFLINE, reason=reason, now=now)
    logger.info("user %s unbanned by %s; %d node(s) unbanned", user.pk, actor.pk, unbanned)
    return unbanned
