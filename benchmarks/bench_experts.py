"""Expert throughput over WebRTC, after hivemind's `benchmark_throughput.py` workload; prints one JSON object.

One server process hosts `--num-experts` experts; `--num-clients` client processes each run
`--batches-per-client` forward+backward calls of `--batch-size` x `--hidden-dim`, round-robin over the
experts, all at once, with the library's default settings (compression, kept forward graphs) unless told
otherwise. The server process is set up as `node-agent serve` sets itself up (`process_tuning`: uvloop,
allocator). Measured in the same run: `local_samples_per_s` (the same block, same batch: a plain PyTorch
training step, i.e. one forward, one backward, clipping and the optimiser step, default torch threads, in a
fresh process, best of two runs), `local_same_allocator_samples_per_s` (the same, with the server's
allocator settings) and `raw_channel_mb_per_s` (one aiortc data channel on loopback, 64 MiB in 64 KiB
messages, both ends in one process, after the record-size search; `raw_channel_standard_chunks_mb_per_s`
with aiortc's 1.2 KB chunks, what a path with a 1,280-byte MTU gets).

`--record-size base` makes every connection keep aiortc's standard chunks (what a path that carries no larger
packets gets); the default probes the largest packet the path carries (16 KiB on loopback).

    python benchmarks/bench_experts.py --expert-class nop
    python benchmarks/bench_experts.py --expert-class nop --record-size base
    python benchmarks/bench_experts.py --expert-class ffn
    python benchmarks/bench_experts.py --expert-class ffn --compression none --no-reuse-forward

Everything stays on 127.0.0.1 (loopback ICE candidates, no STUN). Note: net.core.rmem_max caps the UDP
receive buffer the agent asks for; this script does not change system settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_main(args: argparse.Namespace, ready: mp.Queue, start: mp.Event, stop: mp.Event) -> None:
    from node_agent.process_tuning import tune_server_process

    tune_server_process()  # what `node-agent serve` does: uvloop, allocator settings

    async def main() -> None:
        from node_agent.dht import DHTNode
        from node_agent.moe.server.backend import OptimizerConfig, create_backends
        from node_agent.moe.server.server import ExpertServer, ServerOptions

        dht = await DHTNode.create(listen="127.0.0.1:0")
        uids = [f"expert.{i}" for i in range(args.num_experts)]
        backends = create_backends(uids, args.expert_class, args.hidden_dim, OptimizerConfig(), seed=0)
        options = ServerOptions(max_batch_size=args.max_batch_size, max_wait=args.max_wait, stats_period=3600)
        server = await ExpertServer.create(dht, backends, options, _rtc_options(args))
        ready.put(dht.endpoint)
        while not start.is_set():
            await asyncio.sleep(0.005)
        began = _cpu_seconds()
        while not stop.is_set():
            await asyncio.sleep(0.005)
        ready.put(_cpu_seconds() - began)
        await server.shutdown()
        await dht.shutdown()

    asyncio.run(main())


def _rtc_options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from node_agent.rtc.config import RTCOptions

    if args.record_size == "base":
        return RTCOptions.for_loopback(chunk_size=args.chunk_size, record_probing=None)
    return RTCOptions.for_loopback(chunk_size=args.chunk_size)


def _client_main(args: argparse.Namespace, endpoint: str, start: mp.Event, results: mp.Queue) -> None:
    import torch

    from node_agent.moe.client import ExpertCaller, get_experts
    from node_agent.tensor_codec import encode_tensors

    torch.set_num_threads(1)
    rtc = _rtc_options(args)
    options = {"compression": args.compression} if args.compression else {}
    with ExpertCaller(
        [endpoint], rtc_options=rtc, reuse_forward=not args.no_reuse_forward, **options
    ) as caller:
        uids = [f"expert.{i}" for i in range(args.num_experts)]
        handles = caller.run(get_experts(caller.dht, uids)).result(30)
        assert all(handles), f"experts not found: {handles}"
        x = torch.randn(args.batch_size, args.hidden_dim)
        grad = torch.randn(args.batch_size, args.hidden_dim)
        for h in handles:  # connect, fetch schemas and run one training call before the clock starts, as
            caller.forward(h, [x], timeout=60).result()  # the local baseline runs one step first (optimiser
            caller.backward(h, [x], [grad], timeout=60).result()  # state, parameter snapshot, heap)
        payload = sum(len(t["data"]) for t in encode_tensors([x], caller.compression))
        caller.kept_backwards = caller.recomputed_backwards = 0
        results.put("ready")
        start.wait()
        began, cpu_began = time.perf_counter(), _cpu_seconds()
        for i in range(args.batches_per_client):
            handle = handles[i % len(handles)]
            (out,) = caller.forward(handle, [x], timeout=120).result()
            (g,) = caller.backward(handle, [x], [grad], timeout=120).result()
            assert out.shape == x.shape and g.shape == x.shape
        elapsed, cpu = time.perf_counter() - began, _cpu_seconds() - cpu_began
        kept, recomputed = caller.kept_backwards, caller.recomputed_backwards
    # tensor bytes per batch: forward (x in, y out) + backward (grad in, grad_x out), plus x again when
    # the backward had to recompute (no kept forward on the server)
    wire = args.batches_per_client * 4 * payload + recomputed * payload
    results.put((began, began + elapsed, wire, kept, recomputed, caller.compression.value, cpu))


def local_samples_per_s(args: argparse.Namespace) -> float:
    """A plain local training step of the same block: forward, backward, clip, optimiser step."""
    import torch

    from node_agent.moe.server.backend import OptimizerConfig, create_backends

    config = OptimizerConfig()
    (backend,) = create_backends(["local.0"], args.expert_class, args.hidden_dim, config).values()
    module, optimizer = backend.module, backend.optimizer
    params = [p for p in module.parameters() if p.requires_grad]
    # the inputs need a gradient too: the remote expert returns one to the trainer
    x = torch.randn(args.batch_size, args.hidden_dim, requires_grad=True)
    grad = torch.randn(args.batch_size, args.hidden_dim)

    def step() -> None:
        x.grad = None
        module(x).backward(grad)
        if optimizer is not None:
            if config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    step()
    # as many samples as the remote run trained, so both figures average over the same amount of work
    steps = max(4, args.num_clients * args.batches_per_client)
    began = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * args.batch_size / (time.perf_counter() - began)


def _local_main(args: argparse.Namespace, tuned: bool, results: mp.Queue) -> None:
    """`local_samples_per_s` in a fresh process; `tuned`: with the allocator settings the server uses."""
    if tuned:
        from node_agent.process_tuning import tune_allocator

        tune_allocator()
    results.put(local_samples_per_s(args))


async def raw_channel_mb_per_s(
    total: int = 64 * 2**20, message: int = 64 * 2**10, large_chunks: bool = True
) -> float:
    """One data channel between two connections in this process (record sizes probed as the pool does)."""
    from node_agent.rtc.config import RTCOptions, apply_process_settings, new_peer_connection
    from node_agent.rtc.plpmtu import Phase
    from node_agent.rtc.record_probing import start_record_probing

    options = RTCOptions.for_loopback()
    apply_process_settings(options)
    a, b = new_peer_connection(options), new_peer_connection(options)
    channel = a.createDataChannel("raw")
    done = asyncio.Event()
    received = 0

    def on_datachannel(remote):  # type: ignore[no-untyped-def]
        @remote.on("message")
        def on_message(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received >= total:
                done.set()

    b.on("datachannel", on_datachannel)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await asyncio.wait_for(opened.wait(), 10)
    probing = None
    if large_chunks:
        prober = start_record_probing(a, options.record_probing)
        assert prober is not None, "aiortc changed: record probing unavailable"
        probing = asyncio.ensure_future(prober.run())
        while prober.search.phase is not Phase.COMPLETE:
            await asyncio.sleep(0.01)
    writable = asyncio.Event()
    channel.bufferedAmountLowThreshold = 1 << 20
    channel.on("bufferedamountlow", writable.set)
    chunk = os.urandom(message)
    began = time.perf_counter()
    for _ in range(total // message):
        while channel.bufferedAmount > 2 << 20:
            writable.clear()
            await writable.wait()
        channel.send(chunk)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - began
    if probing is not None:
        probing.cancel()
    await a.close()
    await b.close()
    return total / 2**20 / elapsed


def _get(source: mp.Queue, workers: list, timeout: float):  # type: ignore[no-untyped-def]
    """The next result; fails fast, with the exit code, when a worker died (instead of a long hang)."""
    import queue

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return source.get(timeout=1.0)
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"benchmark worker died: {[(w.name, w.exitcode) for w in dead]}") from None
    raise SystemExit(f"no result within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--num-clients", type=int, default=4)
    parser.add_argument("--batches-per-client", type=int, default=16)
    parser.add_argument("--hidden-dim", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--expert-class", default="ffn", choices=["ffn", "nop", "transformer"])
    parser.add_argument(
        "--compression",
        default=None,
        choices=["none", "float16", "uint8", "blockwise8"],
        help="default: ExpertCaller's default",
    )
    parser.add_argument(
        "--no-reuse-forward", action="store_true", help="recompute the forward on backward (Learning@home)"
    )
    parser.add_argument("--max-batch-size", type=int, default=4096)
    parser.add_argument("--max-wait", type=float, default=0.005)
    parser.add_argument("--chunk-size", type=int, default=64 * 1024)
    parser.add_argument(
        "--record-size",
        default="probe",
        choices=["probe", "base"],
        help="probe: the largest SCTP packet each path carries; base: aiortc's standard ~1.2 KB chunks",
    )
    parser.add_argument("--skip-raw", action="store_true")
    args = parser.parse_args()

    import torch

    ctx = mp.get_context("spawn")
    ready, start, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    server = ctx.Process(target=_server_main, args=(args, ready, start, stop), daemon=True)
    server.start()
    endpoint = _get(ready, [server], 120)
    results = ctx.Queue()
    clients = [
        ctx.Process(target=_client_main, args=(args, endpoint, start, results))
        for _ in range(args.num_clients)
    ]
    for client in clients:
        client.start()
    for _ in clients:  # every client has connected and warmed up: release them together
        assert _get(results, [server, *clients], 180) == "ready"
    start.set()
    spans = [_get(results, [server, *clients], 600) for _ in clients]
    for client in clients:
        client.join(30)
    stop.set()
    server_cpu = _get(ready, [server], 30)
    server.join(30)
    # after the remote run (nothing else running): each variant twice, interleaved, in fresh processes; the
    # best of the two counts, so a slow moment of the machine cannot flatter the remote figure
    local: dict[bool, float] = {False: 0.0, True: 0.0}
    for tuned in (False, True, False, True):
        worker = ctx.Process(target=_local_main, args=(args, tuned, results))
        worker.start()
        local[tuned] = max(local[tuned], _get(results, [worker], 300))
        worker.join(30)
    wall = max(span[1] for span in spans) - min(span[0] for span in spans)
    samples = args.num_clients * args.batches_per_client * args.batch_size
    payload_bytes = sum(span[2] for span in spans)
    result = {
        "benchmark": "experts",
        "expert_class": args.expert_class,
        "record_size": args.record_size,
        "compression": spans[0][5],
        "kept_backwards": sum(span[3] for span in spans),
        "recomputed_backwards": sum(span[4] for span in spans),
        "num_experts": args.num_experts,
        "num_clients": args.num_clients,
        "batches_per_client": args.batches_per_client,
        "batch_size": args.batch_size,
        "hidden_dim": args.hidden_dim,
        "wall_s": round(wall, 3),
        "samples_per_s": round(samples / wall, 1),
        "payload_mb_per_s": round(payload_bytes / 2**20 / wall, 2),
        "local_samples_per_s": round(local[False], 1),
        # the same local step in a process with the expert server's allocator settings (process_tuning)
        "local_same_allocator_samples_per_s": round(local[True], 1),
        # CPU seconds spent while the clients ran (server: from the start signal until every client finished)
        "server_cpu_s": round(server_cpu, 2),
        "clients_cpu_s": round(sum(span[6] for span in spans), 2),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if not args.skip_raw:
        result["raw_channel_mb_per_s"] = round(asyncio.run(raw_channel_mb_per_s()), 2)
        # the same channel with aiortc's standard ~1.2 KB chunks, as on a path that is not loopback
        result["raw_channel_standard_chunks_mb_per_s"] = round(
            asyncio.run(raw_channel_mb_per_s(large_chunks=False)), 2
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
