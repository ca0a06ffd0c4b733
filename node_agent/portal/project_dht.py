"""Every DHT namespace a project uses, and the one function that installs all of their validators.

Every node created for a project (bootstrap, expert server, joined agent, trainer, the portal's observer)
gets :func:`project_validators` (``DHTNode.create(validators=...)``), so every node applies the same
rules to every record: a node that stored what others refuse would be blamed for relaying it, and one that
served a namespace no reader checks would be free storage for anyone. Keys outside the project's
namespaces are refused (without blame). Without a project (``scope=None``: a plain ``node-agent serve`` or
``bootstrap``) the ``experts:`` rules still apply, ungated, and revocation lists are refused, since only a
node that knows the portal's key can tell a real one.
"""

from __future__ import annotations

from dataclasses import dataclass

from node_agent.averaging.records import NAMESPACE as AVERAGING_NAMESPACE
from node_agent.averaging.records import AveragingRecordsValidator
from node_agent.dht.api import DHTNodeAPI, RecordValidator
from node_agent.dht.validation import UnknownNamespaceValidator
from node_agent.moe.announce import EXPERTS_NAMESPACE, ExpertsValidator
from node_agent.portal.gate import CredentialPolicy, RevocationListValidator
from node_agent.portal.project_config import ProjectConfig
from node_agent.portal.revocations import REVOCATIONS_NAMESPACE

#: The namespaces of a project's DHT (anything else is refused by project nodes).
PROJECT_NAMESPACES = (EXPERTS_NAMESPACE, REVOCATIONS_NAMESPACE, AVERAGING_NAMESPACE)


@dataclass(frozen=True, slots=True)
class ProjectScope:
    """What a node must know of its project to check every record: the slug, the portal's key, the gate."""

    project: str
    portal_key: bytes
    gated: bool = False

    @classmethod
    def from_config(cls, config: ProjectConfig) -> ProjectScope:
        return cls(config.project, config.portal_key, config.gated)


def project_validators(
    scope: ProjectScope | None = None, policy: CredentialPolicy | None = None
) -> dict[str, RecordValidator]:
    """The validator of every namespace the project uses, for ``DHTNode.create(validators=...)``.

    ``policy`` (a gated project's credential checks, shared with a revocation watcher) defaults to a new one
    for ``scope``; it must be for the same project and portal key.
    """
    if scope is not None and policy is None:
        policy = CredentialPolicy(scope.project, scope.portal_key)
    gated = scope is not None and scope.gated
    return {
        "": UnknownNamespaceValidator(),
        EXPERTS_NAMESPACE: ExpertsValidator(policy if gated else None),
        REVOCATIONS_NAMESPACE: RevocationListValidator(policy),
        AVERAGING_NAMESPACE: AveragingRecordsValidator(policy if gated else None),
    }


def install_project_validators(
    dht: DHTNodeAPI, scope: ProjectScope | None = None, policy: CredentialPolicy | None = None
) -> None:
    """Register :func:`project_validators` on a node that already runs (replacing earlier ones).

    Prefer ``DHTNode.create(validators=...)``: it applies them before the node joins; this is for
    client-mode nodes (they store nothing for others) and for policies learnt later.
    """
    for prefix, validator in project_validators(scope, policy).items():
        dht.register_validator(prefix, validator)
