"""The reference run for bench_averaging.py: hivemind's averaging benchmark workload on hivemind 1.1.12.

Run it with a separate virtual environment holding hivemind (it is not a dependency of this project)::

    python3 -m venv /tmp/hm-venv && /tmp/hm-venv/bin/pip install torch==2.13.0 hivemind==1.1.12
    /tmp/hm-venv/bin/python benchmarks/bench_averaging_hivemind.py

Same workload, flags and defaults as hivemind's benchmarks/benchmark_averaging.py (16 peers, groups of 4,
5 rounds, 13 tensors per layer, fp16 compression, 0.1 s between starts, 15 s per step), except that the
DHTs and averagers are created in the main thread (1.1.12 refuses to create them in other threads); the
threads only call `step`. Prints one JSON object with the same field names as bench_averaging.py.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time

import torch
from averaging_workload import (  # type: ignore[import-not-found]
    add_workload_arguments,
    sample_tensors,
)
from hivemind import DHT, DecentralizedAverager
from hivemind.compression import Float16Compression


def main() -> None:
    parser = argparse.ArgumentParser()
    add_workload_arguments(parser)
    args = parser.parse_args()

    root = DHT(start=True)
    peers = root.get_visible_maddrs()
    num_groups = 2 ** round(math.log2(args.num_peers / args.target_group_size))
    nbits = round(math.log2(num_groups))
    averagers = []
    for index in range(args.num_peers):
        dht = DHT(initial_peers=peers, start=True)
        averagers.append(
            DecentralizedAverager(
                sample_tensors(args.hid_size, args.num_layers),
                dht,
                prefix="my_tensor",
                initial_group_bits=bin(index % num_groups)[2:].rjust(nbits, "0"),
                compression=Float16Compression(),
                target_group_size=args.target_group_size,
                min_matchmaking_time=args.min_matchmaking_time,
                request_timeout=args.request_timeout,
                start=True,
            )
        )
    lock = threading.Lock()
    successes = attempts = 0
    step_times: list[float] = []

    def run(averager: DecentralizedAverager) -> None:
        nonlocal successes, attempts
        for _ in range(args.num_rounds):
            started = time.monotonic()
            try:
                ok = averager.step(timeout=args.round_timeout) is not None
            except Exception:
                ok = False
            with lock:
                attempts += 1
                successes += int(ok)
                if ok:
                    step_times.append(time.monotonic() - started)

    threads = [threading.Thread(target=run, args=[a]) for a in averagers]
    started = time.monotonic()
    for thread in threads:
        thread.start()
        time.sleep(args.spawn_dtime)
    for thread in threads:
        thread.join()
    total = time.monotonic() - started
    print(
        json.dumps(
            {
                "benchmark": "averaging (hivemind 1.1.12 reference)",
                "num_peers": args.num_peers,
                "target_group_size": args.target_group_size,
                "num_rounds": args.num_rounds,
                "total_s": round(total, 3),
                "success_rate": successes / max(1, attempts),
                "successful_steps": successes,
                "attempted_steps": attempts,
                "mean_round_s": round(sum(step_times) / len(step_times), 3) if step_times else None,
                "max_abs_error": None,
                "torch_threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )
    for averager in averagers:
        averager.shutdown()
    root.shutdown()


if __name__ == "__main__":
    main()
