"""The runtime behind ``node-agent join``: a volunteer's node serving a portal project's experts.

From a saved :class:`~node_agent.credentials.AgentState` (credential + project config) it joins the
project's DHT through the config's bootstrap peers, picks the grid cells with the fewest live replicas
(read from the DHT, not from the portal), hosts those experts, announces them with the credential,
heartbeats to the portal, renews the credential at half its lifetime and, in a gated project, refuses
other nodes' uncredentialed announcements. The portal is never on the serving path: when it is down the
node keeps serving, and telemetry and renewal retry with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_agent import __version__
from node_agent.credentials import (
    AGENT_STATE_FILE,
    AgentState,
    CredentialPolicy,
    RevocationWatcher,
    load_agent_state,
    save_agent_state,
)
from node_agent.identity import Identity
from node_agent.portal_client import (
    PortalClient,
    PortalError,
    PortalRefused,
    PortalUnreachable,
    normalise_portal_url,
)
from node_agent.portal_protocol import ProjectConfig, ProtocolError, parse_project_config, peek_credential
from node_agent.project_dht import ProjectScope, project_validators
from node_agent.telemetry import (
    BackgroundTelemetry,
    Backoff,
    PortalMetricsSink,
    TelemetryReporter,
    TrainerCounters,
)

__all__ = [
    "AgentOptions",
    "AgentRuntime",
    "AgentSetupError",
    "TrainerReporting",
    "agent_platform",
    "choose_cells",
    "count_live_replicas",
    "obtain_agent_state",
    "start_trainer_reporting",
]

logger = logging.getLogger(__name__)

#: Portal error codes after which this node must stop (the owner or an admin banned it).
FATAL_REFUSALS = frozenset({"banned", "node_banned", "user_banned", "revoked", "credential_revoked"})
#: Largest number of DHT keys read to count replicas (a 16x16 grid reads 16).
MAX_CENSUS_KEYS = 1024


def agent_platform() -> str:
    """``Linux-6.1-x86_64 / CPython 3.11.7``, as heartbeats and join requests report it."""
    text = f"{platform.system()}-{platform.release()}-{platform.machine()} / "
    text += f"{platform.python_implementation()} {platform.python_version()}"
    return text[:128]


class AgentSetupError(Exception):
    """The agent cannot start (join refused, no saved credential, wrong portal); the message says why."""


# ---- joining: code -> credential + config, or the saved ones ---------------------------------------------


def obtain_agent_state(
    portal_url: str,
    code: str | None,
    identity: Identity,
    state_path: Path,
    *,
    approval_timeout: float = 3600.0,
    portal_timeout: float = 10.0,
    say: Callable[[str], None] = print,
) -> AgentState:
    """Join with ``code`` (saving the result at ``state_path``) or load the saved state and refresh its
    project config from the portal when it answers (a restart works with the portal down)."""
    client = PortalClient(portal_url, timeout=portal_timeout)
    if code:
        say(f"joining {client.base_url} as node {identity.node_id.hex()} ...")
        try:
            reply = client.join_until_approved(
                identity,
                code,
                __version__,
                agent_platform(),
                max_wait=approval_timeout,
                on_pending=lambda: say("waiting for the project owner to approve this node ..."),
            )
            config = parse_project_config(reply.get("config"))
            state = AgentState(
                portal_url=client.base_url,
                project=config.project,
                credential=reply["credential"],
                config=dict(reply["config"]),
                node=dict(reply.get("node") or {}),
            )
            state.check(identity.public_key_bytes)
        except PortalRefused as exc:
            raise AgentSetupError(
                f"the portal refused the join code: {exc.code} {exc.detail}".strip()
            ) from exc
        except (PortalError, ProtocolError, KeyError, TypeError) as exc:
            raise AgentSetupError(f"could not join: {exc}") from exc
        save_agent_state(state_path, state)
        return state
    try:
        state = load_agent_state(state_path)
        state.check(identity.public_key_bytes)
    except ValueError as exc:
        raise AgentSetupError(str(exc)) from exc
    if normalise_portal_url(portal_url) != state.portal_url:
        raise AgentSetupError(f"{state_path} belongs to {state.portal_url}; join {portal_url} with a code")
    try:
        fresh = client.project_config(state.project)
        parse_project_config(fresh)
    except (PortalError, ProtocolError) as exc:
        logger.warning("using the saved project config: %s", exc)
        say("portal unreachable; starting with the saved project config")
    else:
        state.config = fresh
        save_agent_state(state_path, state)
    if state.expires_at <= time.time():
        say("the saved credential has expired; it will be renewed when the portal answers")
    return state


# ---- which cells to serve (pure) --------------------------------------------------------------------------


def grid_uids(prefix: str, grid: Sequence[int]) -> list[str]:
    from node_agent.moe.uids import make_uid

    cells: list[tuple[int, ...]] = [()]
    for size in grid:
        cells = [(*cell, i) for cell in cells for i in range(size)]
    return [make_uid(prefix, cell) for cell in cells]


def choose_cells(
    prefix: str, grid: Sequence[int], live: Mapping[str, int], count: int, rng: random.Random
) -> list[str]:
    """The ``count`` cells with the fewest live replicas; ties broken at random so that volunteers joining
    together spread over the grid instead of all picking cell 0 (Learning@home section 3.1: every cell
    should stay covered)."""
    uids = grid_uids(prefix, grid)
    keyed = sorted(uids, key=lambda uid: (live.get(uid, 0), rng.random()))
    return keyed[: max(0, min(count, len(keyed)))]


async def count_live_replicas(dht: Any, prefix: str, grid: Sequence[int]) -> dict[str, int]:
    """Live (non-withdrawn) replicas per cell, from the prefix keys one level above the full uids."""
    from node_agent.moe.announce import live_children, prefix_key

    parents = [uid.rsplit(".", 1)[0] + "." for uid in grid_uids(prefix, [*grid[:-1], 1])]
    parents = list(dict.fromkeys(parents))[:MAX_CENSUS_KEYS]
    found = await dht.get_many([prefix_key(p) for p in parents], latest=True)
    counts: dict[str, int] = {}
    for parent in parents:
        for coordinate, replicas in live_children(found.get(prefix_key(parent), {})).items():
            counts[f"{parent}{coordinate}"] = len({a.node_id for a in replicas})
    return counts


# ---- runtime ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AgentOptions:
    data_dir: Path
    listen: str = "0.0.0.0:0"
    num_experts: int = 4
    experts: str | None = None  # an explicit uid pattern instead of the census
    heartbeat_period: float = 30.0
    revocation_period: float = 60.0
    announce_ttl: float = 60.0
    announce_period: float = 20.0
    max_batch_size: int = 4096
    rtc_loopback: bool = False
    rtc_loopback_only: bool = False
    seed: int | None = None


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
        self.dht: Any = None
        self.server: Any = None
        self.policy: CredentialPolicy | None = None
        self.watcher: RevocationWatcher | None = None
        self.telemetry: TelemetryReporter | None = None
        self._renew_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_rate = (0, time.monotonic())

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
        from node_agent.moe.server.backend import OptimizerConfig, create_backends
        from node_agent.moe.server.server import ExpertServer, ServerOptions
        from node_agent.moe.uids import expand_patterns
        from node_agent.rtc.config import RTCOptions

        config = self.config
        policy = CredentialPolicy(config.project, config.portal_key)
        self.dht = await DHTNode.create(
            initial_peers=list(config.bootstrap_peers),
            listen=self.options.listen,
            identity=self.identity,
            validators=project_validators(ProjectScope.from_config(config), policy),
        )
        if config.gated:
            self.policy = policy
            self.watcher = await RevocationWatcher.create(
                self.dht, self.policy, self.options.revocation_period
            )
        if self.options.experts:
            uids = expand_patterns(self.options.experts)
        else:
            live = await count_live_replicas(self.dht, config.expert.prefix, list(config.expert.grid))
            uids = choose_cells(
                config.expert.prefix, config.expert.grid, live, self.options.num_experts, random.Random()
            )
        if self.state.expires_at <= time.time() + 60:
            await self._renew_once()
        optimizer = OptimizerConfig(
            name=config.training.optimizer if config.training.optimizer in ("adam", "sgd") else "adam",
            lr=config.training.learning_rate,
        )
        backends = create_backends(
            uids, config.expert.expert_class, config.expert.hidden_dim, optimizer, seed=self.options.seed
        )
        if self.options.rtc_loopback_only:
            rtc = RTCOptions.for_loopback()
        else:
            rtc = RTCOptions(loopback=self.options.rtc_loopback)
        server_options = ServerOptions(
            max_batch_size=self.options.max_batch_size,
            announce_ttl=self.options.announce_ttl,
            announce_period=self.options.announce_period,
            checkpoint_dir=str(self.options.data_dir / "experts" / config.project),
        )
        self.server = await ExpertServer.create(
            self.dht,
            backends,
            server_options,
            rtc,
            credential=self.state.credential,
            credentials=self.policy,
        )
        self.say(
            f"serving {len(uids)} {config.expert.expert_class} expert(s) of project {config.project}: "
            f"{', '.join(uids)} (DHT endpoint {self.dht.endpoint})"
        )
        self.telemetry = await TelemetryReporter.create(
            self.client,
            self.identity,
            lambda: self.state.credential,
            self.heartbeat_body,
            heartbeat_period=self.options.heartbeat_period,
            on_status=lambda ok, message: self.say(message),
            on_refused=self._on_refused,
        )
        self._spawn(self._renew_loop(), "credential-renewal")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("agent task %s failed", task.get_name(), exc_info=task.exception())

    # ---- telemetry -----------------------------------------------------------------------------------

    def heartbeat_body(self) -> dict[str, Any]:
        server = self.server
        samples = server.runtime.samples
        now = time.monotonic()
        last_samples, last_time = self._last_rate
        rate = max(0.0, (samples - last_samples) / max(now - last_time, 1e-6))
        self._last_rate = (samples, now)
        links = server.pool.links if server.pool is not None else []
        return {
            "node_id": self.identity.node_id.hex(),
            "endpoint": self.dht.endpoint,
            "agent_version": __version__,
            "platform": agent_platform(),
            "role": "server",
            "experts": sorted(server.backends),
            "requests": server.requests,
            "samples": samples,
            "failures": server.failures,
            "bytes_in": server.bytes_in,
            "bytes_out": server.bytes_out,
            "samples_per_s": round(rate, 3),
            "uptime_s": round(now - self.started, 1),
            # Connected peers; the pool does not attribute requests to peers, so the count is 0 (unknown).
            "peers": [{"node_id": link.node_id.hex(), "requests": 0} for link in links][:256],
        }

    def _on_refused(self, error: PortalRefused) -> None:
        if error.code in FATAL_REFUSALS:
            self.stop(f"the portal refused this node: {error.code} {error.detail}".strip())
        elif error.status == 401 or "credential" in error.code:
            self._renew_now.set()

    # ---- credential renewal --------------------------------------------------------------------------

    def _renew_at(self) -> float:
        """Half-way through the credential's lifetime, so a portal outage of a while does no harm."""
        credential = peek_credential(self.state.credential)
        return credential.issued_at + (credential.expires_at - credential.issued_at) / 2

    async def _renew_once(self) -> None:
        """Best-effort renewal before serving with an expired credential (a restart after a long stop)."""
        try:
            reply = await asyncio.to_thread(self.client.renew, self.identity, self.state.credential)
        except (PortalUnreachable, PortalRefused) as exc:
            self.say(f"could not renew the expired credential: {exc}")
            return
        token = reply.data.get("credential")
        if isinstance(token, str):
            self.install_credential(token)

    async def _renew_loop(self) -> None:
        backoff, failures = Backoff(base=5.0, maximum=600.0), 0
        while True:
            wait = (
                self._renew_at() - time.time() if failures == 0 else backoff.delay(failures, random.random())
            )
            self._renew_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), timeout=max(0.0, wait))
            try:
                reply = await asyncio.to_thread(self.client.renew, self.identity, self.state.credential)
            except PortalUnreachable as exc:
                failures += 1
                remaining = self.state.expires_at - time.time()
                logger.warning("credential renewal failed (%s); %.0fs of validity left", exc, remaining)
                continue
            except PortalRefused as exc:
                failures += 1
                if exc.code in FATAL_REFUSALS:
                    self.stop(f"credential renewal refused: {exc.code} {exc.detail}".strip())
                    return
                logger.error("credential renewal refused: %s", exc)
                continue
            token = reply.data.get("credential")
            if not isinstance(token, str):
                failures += 1
                logger.error("renewal reply carries no credential")
                continue
            failures = 0
            self.install_credential(token)

    def install_credential(self, token: str) -> None:
        """Adopt a renewed credential: saved to disk, used by the next announcement and heartbeat."""
        self.state.credential = token
        save_agent_state(self.options.data_dir / AGENT_STATE_FILE, self.state)
        if self.server is not None:
            self.server.set_credential(token)
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.state.expires_at))
        self.say(f"credential renewed, valid until {expires}")

    # ---- lifecycle -----------------------------------------------------------------------------------

    def stop(self, reason: str = "") -> None:
        if reason and not self.stop_reason:
            self.stop_reason = reason
            self.say(reason)
        self.stopped.set()

    async def shutdown(self) -> None:
        """Stop reporting, withdraw announcements (via the server), leave the DHT."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.telemetry is not None:
            await self.telemetry.stop(flush_timeout=0.0)
        if self.watcher is not None:
            await self.watcher.stop()
        if self.server is not None:
            await self.server.shutdown()
        if self.dht is not None:
            await self.dht.shutdown()


# ---- trainers: metrics and heartbeats from synchronous training code -----------------------------------


@dataclass(slots=True)
class TrainerReporting:
    """Subscribe ``sink`` to the trainer's ``MetricsStream``; ``stop()`` after training (short flush)."""

    telemetry: BackgroundTelemetry
    sink: PortalMetricsSink
    counters: TrainerCounters
    state: AgentState

    def stop(self, flush_timeout: float = 3.0) -> None:
        self.telemetry.stop(flush_timeout)


def start_trainer_reporting(
    state: AgentState,
    identity: Identity,
    *,
    batch_size: int,
    heartbeat_period: float = 30.0,
    metrics_period: float = 5.0,
    portal_timeout: float = 10.0,
    backoff: Backoff | None = None,
    say: Callable[[str], None] = print,
) -> TrainerReporting:
    """Start a background reporter for a trainer: never blocks the training loop, whatever the portal does."""
    client = PortalClient(state.portal_url, timeout=portal_timeout)
    counters = TrainerCounters(batch_size)

    def heartbeat() -> dict[str, Any]:
        return {
            "node_id": identity.node_id.hex(),
            "endpoint": "0.0.0.0:0",  # a trainer is a DHT client: nobody dials it
            "agent_version": __version__,
            "platform": agent_platform(),
            "role": "trainer",
            "experts": [],
            "requests": counters.answered + counters.failed,
            "samples": counters.samples,
            "failures": counters.failed,
            "bytes_in": 0,
            "bytes_out": 0,
            "samples_per_s": round(counters.samples_per_s, 3),
            "uptime_s": round(time.monotonic() - counters.started, 1),
            "peers": counters.take_peers(),
        }

    telemetry = BackgroundTelemetry(
        client=client,
        identity=identity,
        credential=lambda: state.credential,
        heartbeat=heartbeat,
        heartbeat_period=heartbeat_period,
        metrics_period=metrics_period,
        backoff=backoff,
        on_status=lambda ok, message: say(message),
    )
    telemetry.start()
    return TrainerReporting(telemetry, PortalMetricsSink(telemetry.outbox, counters), counters, state)
