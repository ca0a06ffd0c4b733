"""`node-agent train`: train a model whose MoE layer runs on the swarm's experts (or locally, `--local`).

With `--portal` (and `--join-code` or `--credential-file`) it also reports metrics and heartbeats to the
portal from a background thread, and takes the swarm's bootstrap peers, grid and hidden size from the
project config unless given; the portal being down never slows or stops training. Such a portal trainer
(the project's Train page shows the command) waits, saying so, until the project lists a peer and its experts
answer; it trains until stopped (SIGINT/SIGTERM: it ends the step, saves a checkpoint with
`--checkpoint-dir`, and sends a last "going offline" heartbeat) unless `--steps` is given. Run it again
without a code to restart from the saved credential; every start is a new run on the portal's charts.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from node_agent.cli import peer_list


def register(subparsers: argparse._SubParsersAction) -> None:
    from node_agent.training.datasets import DATASETS

    parser = subparsers.add_parser(
        "train",
        help="train a model with a decentralized Mixture-of-Experts layer",
        description="Train a classifier (local layers + one MoE layer over the expert grid) on a bundled "
        "dataset; prints progress, streams metrics as JSON lines and ends with a JSON summary.",
    )
    parser.add_argument(
        "--initial-peers", action="extend", type=peer_list, default=[], help="HOST:PORT of the swarm"
    )
    parser.add_argument(
        "--task",
        default=None,
        choices=["classification", "lm"],
        help="lm: the byte-level Transformer language model (see the 'language model' options); default: "
        "the portal project's task, or classification",
    )
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    parser.add_argument("--grid", default=None, help="expert grid, e.g. 4x4 (default: project's, or 4x4)")
    parser.add_argument("--uid-prefix", default=None, help="grid name of the experts (default: ffn)")
    parser.add_argument("--expert-class", default=None, help="expert architecture for --local (default: ffn)")
    parser.add_argument("--hidden-dim", type=int, default=None, help="default: project's, or 64")
    parser.add_argument("--local", action="store_true", help="in-process experts, no swarm (a baseline)")
    parser.add_argument("--switch", action="store_true", help="switch routing: one expert per sample")
    parser.add_argument("--k-best", type=int, default=4)
    parser.add_argument("--k-min", type=int, default=1)
    parser.add_argument("--backward-k-min", type=int, default=1)
    parser.add_argument("--forward-timeout", type=float, default=10.0)
    parser.add_argument("--timeout-after-k-min", type=float, default=1.0)
    parser.add_argument("--backward-timeout", type=float, default=10.0)
    parser.add_argument("--allow-zero-outputs", action="store_true")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="stop after this many steps (default: a portal trainer trains until stopped, others 300)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples (lm: windows of --seq-len bytes); default 64 (lm: 16)",
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of the trainer's own layers")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--max-failed-steps", type=int, default=20)
    parser.add_argument(
        "--metrics-file", default=None, help="append metrics as JSON lines here ('-': stdout)"
    )
    parser.add_argument("--checkpoint-dir", default=None, help="save the trainer's parameters here")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rtc-loopback-only", action="store_true", help="offer only 127.0.0.1 (one machine)")
    parser.add_argument(
        "--listen", default="0.0.0.0:0", help="the trainer's DHT HOST:PORT to bind (default %(default)s)"
    )
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        help="stun:host:port or turn:user:pass@host:port (repeatable; after the portal project's own)",
    )
    from node_agent.cli.train_lm import add_arguments

    add_arguments(parser)
    collab = parser.add_argument_group("collaborative training (average with the project's other trainers)")
    collab.add_argument(
        "--collaborative",
        action="store_true",
        help="average this trainer's own gradients with other trainers of the same run (needs the DHT)",
    )
    collab.add_argument(
        "--target-batch-size",
        type=int,
        default=256,
        help="samples (lm: windows) all trainers gather per global step",
    )
    collab.add_argument("--run-name", default="trainer", help="trainers with the same name train together")
    collab.add_argument("--average-timeout", type=float, default=30.0)
    collab.add_argument(
        "--average-state-every",
        type=int,
        default=10,
        help="every this many global steps, also average parameters and optimiser statistics with the "
        "other trainers (0: never; default %(default)s)",
    )
    collab.add_argument(
        "--wait-for-trainers", type=int, default=0, help="start once this many other trainers are live"
    )
    portal = parser.add_argument_group("portal reporting")
    portal.add_argument("--portal", default=None, help="portal URL to report metrics and heartbeats to")
    portal.add_argument("--join-code", default=None, help="one-time code from the project's Train page")
    portal.add_argument("--credential-file", default=None, help="agent.json saved by an earlier join")
    portal.add_argument(
        "--data-dir",
        default=None,
        help="identity and credential directory (default: trainer/ in the user data directory, apart from "
        "a node's)",
    )
    portal.add_argument("--heartbeat-period", type=float, default=30.0)
    portal.add_argument(
        "--wait-period",
        type=float,
        default=10.0,
        help="while the project has no peer or no expert answers, say so and try again this often (seconds)",
    )
    parser.set_defaults(handler=run)


def _portal_state(args: argparse.Namespace):  # -> tuple[AgentState, Identity]
    """Join with the code or load the saved credential; AgentSetupError with the reason if neither works."""
    from pathlib import Path

    from node_agent.cli.join import default_data_dir, say
    from node_agent.identity import Identity
    from node_agent.portal.joining import (
        RESTART_TRAINER,
        AgentSetupError,
        obtain_agent_state,
        refresh_turn_grant,
    )
    from node_agent.portal.state import AGENT_STATE_FILE, load_agent_state

    if args.credential_file:
        state_path = Path(args.credential_file)
        data_dir = Path(args.data_dir) if args.data_dir else state_path.parent
    else:  # a trainer of its own: a node joined on the same computer keeps its key and credential
        data_dir = Path(args.data_dir) if args.data_dir else Path(default_data_dir()) / "trainer"
        state_path = data_dir / AGENT_STATE_FILE
    try:
        identity = Identity.load_or_create(data_dir / "identity.key")
        portal_url = args.portal or load_agent_state(state_path).portal_url
    except (OSError, ValueError) as exc:
        raise AgentSetupError(str(exc)) from exc
    state = obtain_agent_state(
        portal_url, args.join_code, identity, state_path, say=say, restart=RESTART_TRAINER
    )
    if refresh_turn_grant(state, identity, state_path):
        say("renewed the credential for a fresh TURN credential")
    node = identity.node_id.hex()
    say(f"reporting training of project {state.project} to {state.portal_url} as node {node}")
    return state, identity


#: A portal trainer whose bootstrap peers do not answer says so every PEER_WAIT_STEP s, and gives up after
#: PEER_WAIT_LIMIT s (the DHT node keeps retrying them with backoff meanwhile).
PEER_WAIT_STEP = 10.0
PEER_WAIT_LIMIT = 3600.0


class Stopped(Exception):
    """The trainer was asked to stop (SIGINT/SIGTERM) before it could start training."""


def _wait_for_listed_peers(session_config, state, stop, period: float) -> None:
    """A new project lists no bootstrap peer until an expert server heartbeats: ask the portal for its
    config every `period` s, saying so, until it lists one (the peers go into `session_config`)."""
    from node_agent.cli.join import say
    from node_agent.portal.client import PortalClient, PortalError
    from node_agent.portal.errors import ProtocolError
    from node_agent.portal.project_config import parse_project_config

    client = PortalClient(state.portal_url, timeout=10.0)
    while not session_config.initial_peers:
        say(
            f"waiting for experts: project {state.project} lists no online expert server yet; "
            f"asking {state.portal_url} again in {period:.0f}s"
        )
        if stop.wait(period):
            raise Stopped
        try:
            peers = parse_project_config(client.project_config(state.project)).bootstrap_peers
        except (PortalError, ProtocolError) as exc:
            say(f"could not read the project config: {exc}")
            continue
        session_config.initial_peers = list(peers)


def _portal_caller(session_config, state, identity, stop=None, wait_period: float = PEER_WAIT_STEP):
    """The trainer's caller (an ExpertCaller) for a portal project: it speaks with its joined identity and
    carries its credential in connection offers (busy servers admit credentialed peers first), its traffic is
    reported in heartbeats, and in a gated project the trainer, too, drops announcements without a valid
    credential. Waits for the project's first peer (raises Stopped when `stop` is set meanwhile)."""
    import threading

    from node_agent.cli.join import say
    from node_agent.portal.project_config import parse_project_config
    from node_agent.portal.project_dht import ProjectScope, install_project_validators
    from node_agent.training.session import start_caller

    stop = stop if stop is not None else threading.Event()
    project = parse_project_config(state.config)
    _wait_for_listed_peers(session_config, state, stop, wait_period)
    # A restarting portal (its bootstrap node) must not end the trainer: start, then wait for a peer.
    caller = start_caller(
        session_config, identity=identity, credential=state.credential, require_initial_peer=False
    )
    waited = 0.0
    while not caller.wait_joined(PEER_WAIT_STEP):
        waited += PEER_WAIT_STEP
        if waited >= PEER_WAIT_LIMIT or stop.is_set():
            caller.stop()
            if stop.is_set():
                raise Stopped
            raise TimeoutError(f"no bootstrap peer of project {project.project} answered for {waited:.0f}s")
        say(f"waiting for the project's DHT: none of {len(session_config.initial_peers)} peer(s) answers yet")

    async def install() -> None:  # on the caller's loop: validators are only touched from there
        install_project_validators(caller.dht, ProjectScope.from_config(project))

    caller.run(install()).result(10.0)
    return caller


def _apply_project_config(args: argparse.Namespace, config: dict) -> None:
    """Fill what the command line left open from the project's config (peers, grid, sizes)."""
    from node_agent.portal.project_config import parse_project_config

    project = parse_project_config(config)
    if not args.initial_peers:  # may stay empty: a new project lists peers once a server heartbeats
        args.initial_peers = list(project.bootstrap_peers)
    args.grid = args.grid or "x".join(str(n) for n in project.expert.grid)
    args.uid_prefix = args.uid_prefix or project.expert.prefix
    args.expert_class = args.expert_class or project.expert.expert_class
    args.hidden_dim = args.hidden_dim or project.expert.hidden_dim


def _ice_servers(args: argparse.Namespace, state) -> tuple:  # -> tuple[IceServer, ...]
    """The portal project's STUN/TURN servers (TURN with the credential's grant), then `--ice-server`."""
    import time

    from node_agent.portal.ice import ice_servers_for, parse_turn_grant
    from node_agent.portal.project_config import parse_project_config
    from node_agent.rtc.config import parse_ice_server

    extra = tuple(parse_ice_server(text) for text in args.ice_server)
    if state is None:
        return extra
    config = parse_project_config(state.config)
    return ice_servers_for(config.ice_servers, parse_turn_grant(state.turn), now=time.time(), extra=extra)


def run(args: argparse.Namespace) -> int:
    """Join the portal project if asked (its task decides what trains); train the classifier or the LM."""
    import sys

    portal = None
    if args.portal or args.join_code or args.credential_file:
        from node_agent.portal.joining import AgentSetupError

        try:
            portal = _portal_state(args)
            args.task = _project_task(args.task, portal[0].config)
        except (AgentSetupError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.task == "lm":
        from node_agent.cli.train_lm import run_lm

        return run_lm(args, portal)
    return _run_classification(args, portal)


def _project_task(asked: str | None, config: dict) -> str:
    """The portal project's task (`--task` may only repeat it): its volunteers host experts for that model."""
    from node_agent.portal.project_config import parse_project_config

    project = parse_project_config(config)
    if asked is not None and asked != project.task:
        raise ValueError(
            f"project {project.project} trains a {TASK_NAMES[project.task]}: drop --task {asked}"
        )
    return project.task


TASK_NAMES = {"classification": "classifier", "lm": "language model"}


def _run_classification(args: argparse.Namespace, portal) -> int:  # portal: (AgentState, Identity) | None
    import json
    import sys

    from node_agent.training.models import parse_grid
    from node_agent.training.session import SessionConfig, run_training
    from node_agent.training.trainer import TrainConfig, TrainResult

    args.batch_size = args.batch_size or 64
    if portal is not None:
        try:
            _apply_project_config(args, portal[0].config)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    args.grid = args.grid or "4x4"
    args.uid_prefix = args.uid_prefix or "ffn"
    args.expert_class = args.expert_class or "ffn"
    args.hidden_dim = args.hidden_dim or 64
    if args.steps is None and portal is None:
        args.steps = 300
    if not args.local and not args.initial_peers and portal is None:
        print("error: --initial-peers is required unless --local or --portal", file=sys.stderr)
        return 2
    if args.collaborative and not args.initial_peers and portal is None:
        print("error: --collaborative needs the DHT: --initial-peers or --portal", file=sys.stderr)
        return 2
    collaborative = collaborative_config(args, portal)
    try:
        config = SessionConfig(
            dataset=args.dataset,
            hidden_dim=args.hidden_dim,
            grid=parse_grid(args.grid),
            uid_prefix=args.uid_prefix,
            expert_class=args.expert_class,
            mode="local" if args.local else "remote",
            layer="switch" if args.switch else "mixture",
            k_best=args.k_best,
            k_min=args.k_min,
            backward_k_min=args.backward_k_min,
            forward_timeout=args.forward_timeout,
            timeout_after_k_min=args.timeout_after_k_min,
            backward_timeout=args.backward_timeout,
            allow_zero_outputs=args.allow_zero_outputs,
            initial_peers=args.initial_peers,
            rtc_loopback_only=args.rtc_loopback_only,
            listen=args.listen,
            ice_servers=_ice_servers(args, portal[0] if portal is not None else None),
            resume_from=args.checkpoint_dir if args.resume else None,
            seed=args.seed,
            collaborative=collaborative,
            train=TrainConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                eval_every=args.eval_every,
                log_every=args.log_every,
                max_failed_steps=args.max_failed_steps,
                checkpoint_dir=args.checkpoint_dir,
                checkpoint_every=args.checkpoint_every,
                seed=args.seed,
                progress=not args.no_progress,
                expert_wait_period=args.wait_period if portal is not None else 0.0,
            ),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run_trainer(
        args,
        portal,
        config,
        lambda metrics, caller, stop, say, on_collaborative: run_training(
            config, metrics, caller=caller, stop=stop, say=say, on_collaborative=on_collaborative
        ),
        items_per_step=args.batch_size,
    )
    if not isinstance(result, TrainResult):
        return result
    summary = {
        "steps": result.steps,
        "failed_steps": result.failed_steps,
        "accuracy": result.final_accuracy,
        "loss": result.final_loss,
        "samples_per_s": result.samples_per_s,
        "experts_answered": result.experts_answered,
        "experts_failed": result.experts_failed,
        "stopped": result.stopped,
    }
    if args.collaborative:
        summary.update(
            global_steps=result.global_steps,
            averaged_steps=result.averaged_steps,
            state_rounds_completed=result.state_rounds_completed,
            state_rounds_failed=result.state_rounds_failed,
        )
    print(json.dumps(summary), flush=True)
    return 0


def collaborative_config(args: argparse.Namespace, portal):  # -> CollaborativeConfig | None
    """`--collaborative`'s settings (a portal trainer's credential admits it to the project's averaging)."""
    if not args.collaborative:
        return None
    from node_agent.training.collaborative import CollaborativeConfig

    return CollaborativeConfig(
        run=args.run_name,
        target_batch_size=args.target_batch_size,
        average_timeout=args.average_timeout,
        wait_for_peers=args.wait_for_trainers,
        average_state_every=args.average_state_every,
        credential=portal[0].credential if portal is not None else None,
    )


class TrainingRun(Protocol):
    """Trains one model with these (metrics stream, caller or None, stop event, `say`, and what to call with
    a collaborative optimiser once it exists: the portal's reporting reads its rounds); returns its result."""

    def __call__(
        self,
        metrics: Any,
        caller: Any,
        stop: threading.Event,
        say: Callable[[str], None],
        on_collaborative: Callable[[Any], None] | None,
    ) -> Any: ...


def run_trainer(
    args: argparse.Namespace,
    portal,  # (AgentState, Identity) | None
    session,  # SessionConfig: the swarm's peers, ICE and mode
    train: TrainingRun,
    *,
    items_per_step: int,
    language_model: bool = False,
) -> Any:
    """What every task's trainer shares around `train`: the metrics file, the portal's reporting (a new
    run id; metrics and heartbeats, the last one "going offline"), the caller (for a portal project, it waits
    for a listed peer, saying so), SIGINT/SIGTERM, errors and cleanup. Returns `train`'s result (it has
    `steps` and `stopped`), or the exit code when training could not run or failed."""
    import logging
    import sys

    from node_agent.cli.join import say
    from node_agent.moe.api import ExpertError
    from node_agent.training.metrics import JsonLinesSink, MetricsStream
    from node_agent.training.session import start_caller
    from node_agent.training.trainer import TrainingError

    metrics = MetricsStream()
    if args.metrics_file:
        metrics.subscribe(JsonLinesSink(args.metrics_file))
    reporting = None
    if portal is not None:
        from node_agent.portal.trainer_reporting import start_trainer_reporting

        reporting = start_trainer_reporting(
            *portal,
            batch_size=items_per_step,
            language_model=language_model,
            heartbeat_period=args.heartbeat_period,
            say=say,
        )
        metrics.subscribe(reporting.sink)
        until = f"for {args.steps} steps" if args.steps is not None else "until stopped (Ctrl-C)"
        say(f"training run {reporting.sink.run} of project {portal[0].project} {until}")
    caller = None
    stop = threading.Event()
    try:
        with _stop_on_signals(stop, say):
            if session.mode == "remote" or session.collaborative is not None:
                if portal is not None:
                    state, identity = portal
                    caller = _portal_caller(session, state, identity, stop=stop, wait_period=args.wait_period)
                    if reporting is not None:
                        reporting.counters.peer_requests = caller.take_peer_requests
                else:
                    caller = start_caller(session)
            on_collaborative = reporting.report_averaging if reporting is not None else None
            result = train(metrics, caller, stop, say, on_collaborative)
    except Stopped:
        say("stopped before training started")
        return 0
    except (TrainingError, ExpertError, ValueError, OSError) as exc:
        logging.getLogger("node_agent.cli.train").error("training failed: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        metrics.close()
        if reporting is not None:  # first: its last heartbeat ("going offline") goes out at once
            reporting.stop()
        if caller is not None:
            caller.stop()
    if result.stopped:
        say(f"stopped at step {result.steps}")
    return result


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, say: Callable[[str], None]) -> Iterator[None]:
    """SIGINT or SIGTERM sets `stop` (the trainer ends its step and stops cleanly); a second SIGINT
    interrupts at once. The previous handlers come back afterwards."""
    import signal

    def handle(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        say(f"{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to stop at once)")

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
