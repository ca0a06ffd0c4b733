"""Every DHT namespace a project uses, and the one function that installs all of their validators.

Every node created for a project (bootstrap, expert server, joined agent, trainer, the portal's observer)
calls :func:`install_project_validators` right after ``DHTNode.create``, so every node applies the same
rules to every record: a node that stored what others refuse would be blamed for relaying it, and one that
served a namespace no reader checks would be free storage for anyone. Keys outside the project's
namespaces are refused (without blame). Without a project (``scope=None``: a plain ``node-agent serve`` or
``bootstrap``) the ``experts:`` rules still apply, ungated, and revocation lists are refused, since only a
node that knows the portal's key can tell a real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node_agent.credentials import CredentialPolicy, RevocationListValidator
from node_agent.dht.validation import UnknownNamespaceValidator
from node_agent.moe.announce import EXPERTS_NAMESPACE, ExpertsValidator
from node_agent.portal_protocol import REVOCATIONS_NAMESPACE, ProjectConfig

#: The namespaces of a project's DHT (anything else is refused by project nodes).
PROJECT_NAMESPACES = (EXPERTS_NAMESPACE, REVOCATIONS_NAMESPACE)


@dataclass(frozen=True, slots=True)
class ProjectScope:
    """What a node must know of its project to check every record: the slug, the portal's key, the gate."""

    project: str
    portal_key: bytes
    gated: bool = False

    @classmethod
    def from_config(cls, config: ProjectConfig) -> ProjectScope:
        return cls(config.project, config.portal_key, config.gated)


def install_project_validators(
    dht: Any, scope: ProjectScope | None = None, policy: CredentialPolicy | None = None
) -> CredentialPolicy | None:
    """Register the validator of every namespace the project uses (replacing earlier ones) on ``dht``.

    Returns the credential policy the validators share (``policy``, or a new one for ``scope``); feed it to
    a :class:`node_agent.credentials.RevocationWatcher` in a gated project. None without a scope.
    """
    if scope is not None and policy is None:
        policy = CredentialPolicy(scope.project, scope.portal_key)
    gated = scope is not None and scope.gated
    dht.register_validator("", UnknownNamespaceValidator())
    dht.register_validator(EXPERTS_NAMESPACE, ExpertsValidator(policy if gated else None))
    dht.register_validator(REVOCATIONS_NAMESPACE, RevocationListValidator(policy))
    return policy
