"""The victims and the honest trainer of the adversarial benchmark, each run as its own process.

    python benchmarks/adversary/victims.py server '<json config>'
    python benchmarks/adversary/victims.py trainer '<json config>'

`server` is a gated project's expert server, set up as `node-agent join` sets one up (process tuning,
credential checks on its DHT node, the revocation watcher, announcements carrying its credential); it
prints `{"endpoint", "node_id"}` once serving. `trainer` is an honest trainer on the real client
(`ExpertCaller` over WebRTC on loopback with its portal credential, credential checks on its DHT node):
every call discovers an expert afresh through the DHT (prefix keys, then the uid key, as beam search does
on a cache miss), then runs one forward and one backward. It prints a JSON line when a call starts and one
when it ends, until its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HONEST_CALL_TIMEOUT = 8.0


def _policy(config: dict[str, Any]) -> Any:
    from node_agent.portal.gate import CredentialPolicy

    return CredentialPolicy(config["project"], bytes.fromhex(config["portal_public_key"]))


async def _serve(config: dict[str, Any]) -> None:
    from node_agent.dht import DHTNode
    from node_agent.identity import Identity
    from node_agent.moe.server.backend import OptimizerConfig, create_backends
    from node_agent.moe.server.server import ExpertServer, ServerOptions
    from node_agent.moe.uids import expand_patterns
    from node_agent.portal.gate import RevocationWatcher, install_credential_checks
    from node_agent.rtc.config import RTCOptions

    identity = Identity.load_or_create(config["identity"])
    dht = await DHTNode.create(initial_peers=[config["bootstrap"]], listen="127.0.0.1:0", identity=identity)
    policy = _policy(config)
    install_credential_checks(dht, policy)
    watcher = await RevocationWatcher.create(dht, policy, period=config["revocation_period"])
    backends = create_backends(
        expand_patterns(config["experts"]), "ffn", config["hidden_dim"], OptimizerConfig(), seed=0
    )
    options = ServerOptions(
        announce_ttl=config["announce_ttl"], announce_period=config["announce_period"], stats_period=3600
    )
    server = await ExpertServer.create(
        dht,
        backends,
        options,
        RTCOptions.for_loopback(),
        credential=config["credential"],
        credentials=policy,
    )
    print(json.dumps({"endpoint": dht.endpoint, "node_id": dht.node_id.hex()}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), lambda: sys.stdin.read() or stop.set())
    await stop.wait()
    await watcher.stop()
    await server.shutdown()
    await dht.shutdown()


def run_server(config: dict[str, Any]) -> None:
    from node_agent.process_tuning import tune_server_process

    tune_server_process()  # what `node-agent serve` and `join` do first: uvloop, allocator settings
    asyncio.run(_serve(config))


async def honest_call(caller: Any, hidden_dim: int, prefix: str) -> None:
    """Find one live expert through the DHT (no cache), then one forward and one backward through it."""
    import torch

    from node_agent.moe.announce import live_children, prefix_key
    from node_agent.moe.client import get_experts

    dht = caller.dht
    uid = prefix.rstrip(".")
    for _ in range(2):  # a 2-d grid: two prefix levels
        children = live_children(await dht.get(prefix_key(uid + "."), latest=True))
        if not children:
            raise LookupError(f"no live expert under {uid}.")
        uid = f"{uid}.{random.choice(sorted(children))}"
    (handle,) = await get_experts(dht, [uid])
    if handle is None:
        raise LookupError(f"{uid} has no live replica")
    x = torch.randn(16, hidden_dim)
    (y,) = await caller.forward_async(handle, [x], HONEST_CALL_TIMEOUT)
    (g,) = await caller.backward_async(handle, [x], [torch.randn_like(y)], HONEST_CALL_TIMEOUT)
    if y.shape != x.shape or g.shape != x.shape:
        raise ValueError(f"wrong shapes {tuple(y.shape)} / {tuple(g.shape)}")


def contacts(caller: Any) -> int | None:
    """How many peers the trainer's DHT node knows (None if that cannot be read): a client that lost them
    all finds nothing any more, whatever the swarm holds."""
    try:
        return len(caller.dht.core.routing)
    except Exception:
        return None


def run_trainer(config: dict[str, Any]) -> None:
    import torch

    from node_agent.moe.client import ExpertCaller
    from node_agent.portal.gate import RevocationWatcher, install_credential_checks
    from node_agent.rtc.config import RTCOptions

    torch.set_num_threads(1)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    policy = _policy(config)

    async def checks(caller: ExpertCaller) -> None:
        install_credential_checks(caller.dht, policy)
        await RevocationWatcher.create(caller.dht, policy, period=config["revocation_period"])

    from node_agent.identity import Identity

    identity = Identity.load_or_create(config["identity"])  # what `node-agent train --portal` joined with
    with ExpertCaller(
        [config["bootstrap"]],
        rtc_options=RTCOptions.for_loopback(),
        identity=identity,
        credential=config["credential"],
    ) as caller:
        caller.run(checks(caller)).result(30)
        print(json.dumps({"ready": True}), flush=True)
        while not stop.is_set():
            started = time.time()
            print(json.dumps({"start": started}), flush=True)  # a call that never ends still counts
            error = ""
            try:
                call = caller.run(honest_call(caller, config["hidden_dim"], config["prefix"]))
                call.result(HONEST_CALL_TIMEOUT * 3)
            except BaseException as exc:  # any failure of an honest call is what the benchmark counts
                error = f"{type(exc).__name__}: {exc}"[:160]
            record = {
                "t0": started,
                "t1": time.time(),
                "ok": not error,
                "error": error,
                "contacts": contacts(caller),
            }
            print(json.dumps(record), flush=True)
            stop.wait(config["pause"])


if __name__ == "__main__":
    role, raw = sys.argv[1], sys.argv[2]
    {"server": run_server, "trainer": run_trainer}[role](json.loads(raw))
