"""The runtime behind ``node-agent join``: a volunteer's node serving a portal project's experts.

From a saved :class:`~node_agent.portal.state.AgentState` (credential + project config) it joins the
project's DHT through the config's bootstrap peers, picks the grid cells with the fewest live replicas
(:mod:`node_agent.portal.census`), hosts those experts, announces them with the credential, heartbeats to
the portal, renews the credential (:mod:`node_agent.portal.renewal`) and, in a gated project, refuses other
nodes' uncredentialed announcements. The portal is never on the serving path: when it is down the node
keeps serving, and telemetry and renewal retry with backoff. Its background loops run under one
:class:`~node_agent.supervisor.TaskSupervisor`: a loop that keeps dying stops the runtime loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from node_agent import __version__
from node_agent.credit.receipts import receipt_from_text, receipt_to_text
from node_agent.dht.api import DHTNodeAPI
from node_agent.identity import Identity
from node_agent.portal.census import (
    Grid,
    cells_to_move,
    choose_cells,
    count_live_replicas,
    default_expert_count,
    live_replica_owners,
)
from node_agent.portal.client import PortalClient, PortalError, PortalRefused
from node_agent.portal.errors import ProtocolError
from node_agent.portal.gate import CredentialPolicy, RevocationWatcher
from node_agent.portal.heartbeat_size import fit_heartbeat, with_receipts
from node_agent.portal.ice import TurnGrant, ice_servers_for, parse_turn_grant
from node_agent.portal.joining import agent_platform
from node_agent.portal.latest_export import portal_export_fallback
from node_agent.portal.project_config import ExpertSpec, ProjectConfig, parse_project_config
from node_agent.portal.project_dht import ProjectScope, project_validators
from node_agent.portal.renewal import CredentialRenewer
from node_agent.portal.reporter import TelemetryReporter
from node_agent.portal.schemas import (
    MAX_RECEIPTS_PER_HEARTBEAT,
    MAX_REPLICA_STATES,
    HeartbeatBody,
    PeerActivity,
    ReplicaState,
)
from node_agent.portal.state import AGENT_STATE_FILE, AgentState, save_agent_state
from node_agent.rtc.config import IceServer
from node_agent.supervisor import TaskSupervisor

if TYPE_CHECKING:  # the expert server imports torch: loaded when the runtime starts
    from node_agent.moe.server.server import ExpertServer
    from node_agent.rtc.config import RTCOptions

__all__ = ["AgentOptions", "AgentRuntime"]

RENEWAL_LOOP = "credential-renewal"
PEERS_LOOP = "bootstrap-peers"
SHUTDOWN_HEARTBEAT_TIMEOUT = 3.0  # the last, "going offline" heartbeat; a stop never waits longer for it

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class AgentOptions:
    data_dir: Path
    listen: str = "0.0.0.0:0"
    num_experts: int | None = None  # None: `census.default_expert_count` (4, or one per grid)
    experts: str | None = None  # an explicit uid pattern instead of the census
    heartbeat_period: float = 30.0
    revocation_period: float = 60.0
    announce_ttl: float = 60.0
    announce_period: float = 20.0
    max_batch_size: int = 4096
    rtc_loopback: bool = False
    rtc_loopback_only: bool = False
    seed: int | None = None
    peer_refresh_period: float = 30.0  # while no DHT peer answers, re-read the bootstrap peers this often
    rebalance_after: float = 5.0  # seconds (plus up to as much jitter) before each second look at the census
    rebalance_rounds: int = 3
    #: STUN/TURN servers from `--ice-server`, used after the project's own (`node_agent.portal.ice`).
    ice_servers: tuple[IceServer, ...] = ()


def only_loopback_reachable(rtc: RTCOptions) -> bool:
    """Whether a server with these options offers peers on other machines no ICE candidate at all."""
    if rtc.host_addresses is not None:
        return all(address.startswith("127.") for address in rtc.host_addresses)
    from node_agent.rtc.host_candidates import original_get_host_addresses

    return not original_get_host_addresses()(use_ipv4=True, use_ipv6=True) and not rtc.ice_servers


class AgentRuntime:
    """DHT node + expert server + telemetry + credential renewal for one joined project."""

    def __init__(
        self,
        client: PortalClient,
        identity: Identity,
        state: AgentState,
        options: AgentOptions,
        say: Callable[[str], None],
    ) -> None:
        self.client = client
        self.identity = identity
        self.state = state
        self.options = options
        self.say = say
        self.config: ProjectConfig = parse_project_config(state.config)
        self.started = time.monotonic()
        self.stopped = asyncio.Event()
        self.stop_reason = ""
        self.dht: DHTNodeAPI | None = None
        self.server: ExpertServer | None = None
        self.policy: CredentialPolicy | None = None
        self.watcher: RevocationWatcher | None = None
        self.telemetry: TelemetryReporter | None = None
        self.supervisor = TaskSupervisor("agent runtime", on_fatal=self.stop)
        self.renewer = CredentialRenewer(
            client,
            identity,
            lambda: self.state.credential,
            self.install_credential,
            self.stop,
            say,
            turn=self.turn_grant,
            install_turn=self.install_turn,
        )
        self._last_rate = (0, time.monotonic())
        self._rebalance_task: asyncio.Task[None] | None = None

    @classmethod
    async def create(
        cls,
        client: PortalClient,
        identity: Identity,
        state: AgentState,
        options: AgentOptions,
        say: Callable[[str], None] = print,
    ) -> AgentRuntime:
        """Join the DHT, start serving and reporting; on any failure, undo what was started and raise."""
        runtime = cls(client, identity, state, options, say)
        try:
            await runtime._start()
        except BaseException:
            await runtime.shutdown()
            raise
        return runtime

    async def _start(self) -> None:
        from node_agent.dht import DHTNode
        from node_agent.moe.uids import expand_patterns

        config = self.config
        policy = CredentialPolicy(config.project, config.portal_key)
        self.dht = await DHTNode.create(
            initial_peers=list(config.bootstrap_peers),
            listen=self.options.listen,
            identity=self.identity,
            validators=project_validators(ProjectScope.from_config(config), policy),
            require_initial_peer=False,  # a restarting portal or bootstrap must not stop a volunteer's node
        )
        if not self.dht.joined:
            self.say(
                f"none of the project's {len(config.bootstrap_peers)} bootstrap peer(s) answered; "
                "serving anyway and retrying them with backoff (and asking the portal for new ones)"
            )
        if config.gated:
            self.policy = policy
            self.watcher = await RevocationWatcher.create(
                self.dht, self.policy, self.options.revocation_period, supervisor=self.supervisor
            )
        if self.options.experts:
            uids = expand_patterns(self.options.experts)
        else:
            grids = project_grids(config)
            live = await count_live_replicas(self.dht, grids)
            count = self.options.num_experts or default_expert_count(grids, largest_expert_parameters(config))
            uids = choose_cells(grids, live, count, random.Random())
        grant = self.turn_grant()
        turn_stale = grant is not None and grant.renew_at() <= time.time()  # a restart after a long stop
        if self.state.expires_at <= time.time() + 60 or turn_stale:
            await self.renewer.renew_once()
        self.say(self._ice_summary())
        await self._serve(uids)
        self.telemetry = await TelemetryReporter.create(
            self.client,
            self.identity,
            lambda: self.state.credential,
            self.heartbeat_body,
            heartbeat_period=self.options.heartbeat_period,
            on_status=lambda ok, message: self.say(message),
            on_refused=self._on_refused,
            supervisor=self.supervisor,
            on_heartbeat_sent=self._heartbeat_sent,
        )
        self.supervisor.start(RENEWAL_LOOP, self.renewer.run)
        self.supervisor.start(PEERS_LOOP, self._refresh_bootstrap_peers)
        if not self.options.experts and self.options.rebalance_rounds > 0:
            self._rebalance_task = asyncio.create_task(self._rebalance(), name="census-rebalance")

    async def _serve(self, uids: list[str]) -> None:
        """Create the experts ``uids`` and an expert server announcing them (replacing no other server)."""
        from node_agent.moe.server.backend import OptimizerConfig, create_backends
        from node_agent.moe.server.server import ExpertServer, ServerOptions
        from node_agent.rtc.config import RTCOptions

        config, dht = self.config, self.dht
        assert dht is not None
        optimizer = OptimizerConfig(
            name=config.training.optimizer if config.training.optimizer in ("adam", "sgd") else "adam",
            lr=config.training.learning_rate,
        )
        backends = {}
        for spec, grid_uids in uids_by_grid(config, uids):  # each grid's own expert class and width
            backends.update(
                create_backends(
                    grid_uids, spec.expert_class, spec.hidden_dim, optimizer, seed=self.options.seed
                )
            )
        if self.options.rtc_loopback_only:
            rtc = RTCOptions.for_loopback()
        else:
            rtc = RTCOptions(ice_servers=self.ice_servers(), loopback=self.options.rtc_loopback)
        server_options = ServerOptions(
            max_batch_size=self.options.max_batch_size,
            announce_ttl=self.options.announce_ttl,
            announce_period=self.options.announce_period,
            checkpoint_dir=str(self.options.data_dir / "experts" / config.project),
        )
        # Cells no live replica holds start from the project's last export, downloaded only if one needs it.
        fallback = portal_export_fallback(
            self.client,
            self.identity,
            lambda: self.state.credential,
            config.project,
            self.options.data_dir / "exports" / config.project,
            self.say,
        )
        self.server = await ExpertServer.create(
            dht,
            backends,
            server_options,
            rtc,
            credential=self.state.credential,
            credentials=self.policy,
            on_fatal=self.stop,
            fallback=fallback,
        )
        self.say(
            f"serving {len(uids)} {expert_classes(config, uids)} expert(s) of project {config.project}: "
            f"{', '.join(uids)} (DHT endpoint {dht.endpoint})"
        )
        if only_loopback_reachable(rtc):
            self.say(
                "this computer has no network interface besides loopback: only peers on this same machine "
                "can reach its experts (the portal's My nodes page shows whether its probe reached them)"
            )

    async def _refresh_bootstrap_peers(self) -> None:
        """While no DHT peer is live, re-read the project's bootstrap peers from the portal and rejoin
        through them: a restarted portal may run its bootstrap node at a new address."""
        while True:
            await asyncio.sleep(self.options.peer_refresh_period)
            if self.dht is None or self.dht.joined:
                continue
            try:
                fresh = await asyncio.to_thread(self.client.project_config, self.config.project)
                config = parse_project_config(fresh)
            except (PortalError, ProtocolError) as exc:
                logger.info("no DHT peer and the portal did not give new bootstrap peers: %s", exc)
                continue
            if config.project != self.config.project or config.portal_key != self.config.portal_key:
                logger.warning("the portal's config is for another project or key; keeping the saved peers")
                continue
            if list(config.bootstrap_peers) != list(self.config.bootstrap_peers):
                self.say(f"the portal lists new bootstrap peers: {', '.join(config.bootstrap_peers)}")
                self.state.config = fresh
                self.config = config
                save_agent_state(self.options.data_dir / AGENT_STATE_FILE, self.state)
            await self.dht.set_initial_peers(list(config.bootstrap_peers))

    async def _rebalance(self) -> None:
        """Look at the census again once our announcements spread; move duplicated cells to holes.

        Agents that start together all saw an empty grid and chose at random; see `census.cells_to_move`.
        """
        rng = random.Random()
        try:
            for _ in range(self.options.rebalance_rounds):
                await asyncio.sleep(self.options.rebalance_after * (1.0 + rng.random()))
                server, dht = self.server, self.dht
                if server is None or dht is None:
                    return
                mine = sorted(server.backends)
                grids = project_grids(self.config)
                owners = await live_replica_owners(dht, grids)
                moves = cells_to_move(mine, owners, self.identity.node_id, grids, rng)
                if not moves:
                    return
                self.say(
                    "other nodes serve "
                    + ", ".join(sorted(moves))
                    + f" too; moving to empty cells {', '.join(moves[uid] for uid in sorted(moves))}"
                )
                self.server = None
                await server.shutdown()  # withdraws its announcements
                await self._serve(sorted(moves.get(uid, uid) for uid in mine))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("moving to empty grid cells failed")
            self.stop(f"could not move to empty grid cells: {exc}")

    # ---- telemetry -----------------------------------------------------------------------------------

    def heartbeat_body(self, credential: str) -> HeartbeatBody:
        server, dht = self.server, self.dht
        if server is None or dht is None:
            raise RuntimeError("no heartbeat before the runtime started")
        samples = server.runtime.samples
        now = time.monotonic()
        last_samples, last_time = self._last_rate
        rate = max(0.0, (samples - last_samples) / max(now - last_time, 1e-6))
        self._last_rate = (samples, now)
        links = server.pool.links if server.pool is not None else []
        body = HeartbeatBody(
            credential=credential,
            node_id=self.identity.node_id.hex(),
            endpoint=dht.endpoint,
            agent_version=__version__,
            platform=agent_platform(),
            role="server",
            experts=sorted(server.backends),
            requests=server.requests,
            samples=samples,
            failures=server.failures,
            bytes_in=server.bytes_in,
            bytes_out=server.bytes_out,
            samples_per_s=round(rate, 3),
            uptime_s=round(now - self.started, 1),
            # Connected peers; the pool does not attribute requests to peers, so the count is 0 (unknown).
            peers=[PeerActivity(node_id=link.node_id.hex(), requests=0) for link in links][
                :256
            ],  # fitted below
            replica_states=replica_states(server, now),
            averaging_rounds_completed=server.replicas.stats.rounds_completed,
            averaging_rounds_failed=server.replicas.stats.rounds_failed,
        )
        return with_receipts(
            fit_heartbeat(body),
            [receipt_to_text(d) for d in server.receipts.peek(MAX_RECEIPTS_PER_HEARTBEAT)],
        )

    def _heartbeat_sent(self, body: HeartbeatBody) -> None:
        """The portal has the receipts this heartbeat carried: forget them."""
        if self.server is not None and body.receipts:
            self.server.receipts.acknowledge(receipt_from_text(text) for text in body.receipts)

    def _on_refused(self, error: PortalRefused) -> None:
        if error.fatal:
            self.stop(f"the portal refused this node: {error.code} {error.detail}".strip())
        elif error.status == 401 or "credential" in error.code:
            self.renewer.renew_now()

    # ---- credential ----------------------------------------------------------------------------------

    def install_credential(self, token: str) -> None:
        """Adopt a renewed credential: saved to disk, used by the next announcement and heartbeat."""
        self.state.credential = token
        save_agent_state(self.options.data_dir / AGENT_STATE_FILE, self.state)
        if self.server is not None:
            self.server.set_credential(token)
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.state.expires_at))
        self.say(f"credential renewed, valid until {expires}")

    # ---- STUN/TURN -----------------------------------------------------------------------------------

    def turn_grant(self) -> TurnGrant | None:
        """The TURN credential of the last join or renewal (None: no TURN at the portal, or unreadable)."""
        try:
            return parse_turn_grant(self.state.turn)
        except ProtocolError as exc:
            logger.warning("ignoring the saved TURN credential: %s", exc)
            return None

    def ice_servers(self) -> tuple[IceServer, ...]:
        """The project's STUN/TURN servers (TURN with our current grant), then `--ice-server` ones."""
        return ice_servers_for(
            self.config.ice_servers, self.turn_grant(), now=time.time(), extra=self.options.ice_servers
        )

    def install_turn(self, grant: TurnGrant) -> None:
        """Adopt a renewed TURN credential: saved, and used by the connections made from now on."""
        self.state.turn = msgspec.to_builtins(grant)
        save_agent_state(self.options.data_dir / AGENT_STATE_FILE, self.state)
        if self.server is not None and self.server.pool is not None and not self.options.rtc_loopback_only:
            self.server.pool.set_ice_servers(self.ice_servers())
        logger.info(
            "TURN credential renewed, valid until %s",
            time.strftime("%H:%M:%S", time.localtime(grant.expires_at)),
        )

    def _ice_summary(self) -> str:
        servers = self.ice_servers()
        if not servers:
            return "no STUN/TURN servers: peers behind other NATs may not reach this node (see --ice-server)"
        grant = self.turn_grant()
        text = "STUN/TURN servers: " + ", ".join(server.urls for server in servers)
        if grant is not None and grant.expires_at > time.time():
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(grant.expires_at))
            text += f" (TURN credential valid until {until})"
        return text

    # ---- lifecycle -----------------------------------------------------------------------------------

    def stop(self, reason: str = "") -> None:
        if reason and not self.stop_reason:
            self.stop_reason = reason
            self.say(reason)
        self.stopped.set()

    async def shutdown(self) -> None:
        """Say "going offline" in a last heartbeat, withdraw announcements (via the server), leave the DHT."""
        if self._rebalance_task is not None:
            self._rebalance_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebalance_task
        if self.telemetry is not None:
            await self.telemetry.stop(flush_timeout=SHUTDOWN_HEARTBEAT_TIMEOUT)
        await self.supervisor.close()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.server is not None:
            await self.server.shutdown()
        if self.dht is not None:
            await self.dht.shutdown()


def project_grids(config: ProjectConfig) -> list[Grid]:
    """Every grid the project's volunteers serve, as the census reads them."""
    return [(spec.prefix, list(spec.grid)) for spec in config.expert_grids]


def largest_expert_parameters(config: ProjectConfig) -> int:
    """Parameters of the project's largest expert, counted on torch's `meta` device (nothing allocated)."""
    import torch

    from node_agent.moe.experts import get_expert_class

    shapes = {(spec.expert_class, spec.hidden_dim) for spec in config.expert_grids}
    with torch.device("meta"):
        return max(
            sum(p.numel() for p in get_expert_class(name).build(width).parameters()) for name, width in shapes
        )


def grid_of(config: ProjectConfig, uid: str) -> ExpertSpec:
    """The grid `uid` belongs to (an explicit `--expert-pattern` may name any uid: the first grid's then)."""
    from node_agent.moe.uids import parse_uid

    grids = config.expert_grids
    name = parse_uid(uid)[0]
    return next((spec for spec in grids if spec.prefix == name), grids[0])


def uids_by_grid(config: ProjectConfig, uids: list[str]) -> list[tuple[ExpertSpec, list[str]]]:
    """`uids` grouped by their grid, in the config's grid order."""
    groups: dict[str, tuple[ExpertSpec, list[str]]] = {}
    for uid in uids:
        spec = grid_of(config, uid)
        groups.setdefault(spec.prefix, (spec, []))[1].append(uid)
    return list(groups.values())


def expert_classes(config: ProjectConfig, uids: list[str]) -> str:
    """`ffn`, or `ffn/transformer` when the served grids have several expert classes."""
    return "/".join(dict.fromkeys(grid_of(config, uid).expert_class for uid in uids)) or "no"


def replica_states(server: Any, now: float) -> list[ReplicaState]:
    """Each hosted expert's step and seconds since it last averaged with another replica."""
    averaged = server.replicas.stats.last_averaged
    return [
        ReplicaState(
            uid=uid,
            step=backend.steps,
            averaged_age_s=round(now - averaged[uid], 1) if uid in averaged else None,
        )
        for uid, backend in sorted(server.backends.items())
    ][:MAX_REPLICA_STATES]
