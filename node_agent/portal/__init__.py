"""The agent's portal side, and the formats it shares with the portal (one module per job).

Shared formats, pure (no sockets, clocks, torch or Django; the portal imports them as they are):
:mod:`~node_agent.portal.errors` (errors, the strict decoder), :mod:`~node_agent.portal.tokens`
(credentials), :mod:`~node_agent.portal.signed_body` (signed HTTP bodies),
:mod:`~node_agent.portal.schemas` (bodies and replies of the agent API),
:mod:`~node_agent.portal.revocations` (the revocation list) and :mod:`~node_agent.portal.project_config`.

Agent side: :mod:`~node_agent.portal.client` (HTTP calls), :mod:`~node_agent.portal.state` (``agent.json``),
:mod:`~node_agent.portal.joining`, :mod:`~node_agent.portal.census` (which cells to serve),
:mod:`~node_agent.portal.gate` (credential checks in the DHT) and :mod:`~node_agent.portal.project_dht`
(every namespace's validator), :mod:`~node_agent.portal.renewal`, :mod:`~node_agent.portal.outbox`,
:mod:`~node_agent.portal.reporter` (telemetry), :mod:`~node_agent.portal.trainer_reporting` and
:mod:`~node_agent.portal.runtime` (``node-agent join``).
"""
