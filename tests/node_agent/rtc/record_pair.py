"""Two real aiortc peers in this process over 127.0.0.1, both probing their record size; run inside a
network namespace whose loopback MTU the test sets (`test_record_probing.py`). Prints one JSON line per event:

* `found`: the search ended (`packet`: the validated SCTP packet size, `seconds`);
* with `--black-hole`: then waits for a line on stdin (the test lowered the MTU meanwhile), sends data both
  ways and prints `recovered` (every byte arrived intact; `packet` after the fall-back, `black_holes`),
  then `researched` once a new search ended (`packet`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from typing import Any

from node_agent.rtc.plpmtu import Phase, SearchLimits
from node_agent.rtc.record_probing import ProbeSettings, RecordProber, start_record_probing
from tests.node_agent.rtc.conftest import connect_pair

SETTINGS = ProbeSettings(SearchLimits(max_probes=2), confirm_interval=1.0, raise_interval=2.0)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def until(condition: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def transfer(sender: Any, receiver: Any, total: int) -> bool:
    """`total` random bytes in 32 KiB messages; True when the receiver's digest matches the sender's."""
    sent, got = hashlib.sha256(), hashlib.sha256()
    received = 0
    done = asyncio.Event()

    def on_message(data: bytes) -> None:
        nonlocal received
        got.update(data)
        received += len(data)
        if received >= total:
            done.set()

    receiver.on("message", on_message)
    for _ in range(total // 32768):
        message = os.urandom(32768)
        sent.update(message)
        while sender.bufferedAmount > 1 << 20:
            await asyncio.sleep(0.005)
        sender.send(message)
    async with asyncio.timeout(60):
        await done.wait()
    receiver.remove_listener("message", on_message)
    return sent.digest() == got.digest()


async def main(black_hole: bool) -> None:
    pair = await connect_pair()
    began = time.monotonic()
    probers: list[RecordProber] = []
    for pc in (pair.offerer, pair.answerer):
        prober = start_record_probing(pc, SETTINGS)
        assert prober is not None, "no prober: DF cannot be changed here"
        probers.append(prober)
    tasks = [asyncio.ensure_future(prober.run()) for prober in probers]
    a, _b = probers
    try:
        await until(lambda: all(p.search.phase is Phase.COMPLETE for p in probers), 30)
        emit("found", packet=a.packet_size, seconds=round(time.monotonic() - began, 2))
        if not black_hole:
            return
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        began = time.monotonic()
        intact = await transfer(pair.offer_channel, pair.answer_channel, 4 << 20)
        intact = intact and await transfer(pair.answer_channel, pair.offer_channel, 1 << 20)
        await until(lambda: a.search.black_holes > 0, 30)
        emit(
            "recovered",
            intact=intact,
            packet=a.packet_size,
            black_holes=a.search.black_holes,
            seconds=round(time.monotonic() - began, 2),
        )
        await until(lambda: a.search.phase is Phase.COMPLETE and a.packet_size > SETTINGS.limits.base, 30)
        intact = await transfer(pair.offer_channel, pair.answer_channel, 1 << 20)
        emit("researched", packet=a.packet_size, intact=intact)
    finally:
        for task in tasks:
            task.cancel()
        await pair.offerer.close()
        await pair.answerer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--black-hole", action="store_true")
    asyncio.run(main(parser.parse_args().black_hole))
