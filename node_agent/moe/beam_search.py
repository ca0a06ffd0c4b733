"""Find the best-scoring live experts of a grid through the DHT, one grid dimension at a time.

Learning@home (section 3.1) scores an expert `ffn.i.j` as the sum of per-dimension gating scores
`s0[i] + s1[j]` and finds the top-k *live* experts with a beam search over uid prefixes: servers announce
every prefix of their uids (`ffn.` -> child `3`, `ffn.3.` -> child `14`), so a trainer learns which
coordinates are populated without knowing who hosts them.

A plain beam can miss a good expert behind a prefix with a mediocre first score when grid cells are empty.
`GridSearch` is therefore a best-first (A*) search whose frontier priority is the partial score plus the
best possible score of the remaining dimensions: an upper bound, exact for complete uids, so experts pop out
in true score order and the result is the exact top-k among live experts. `beam_size` bounds how many
unknown prefixes one sample may ask for per round; all samples of a batch share one batched lookup per
round (`GridSearch.step` / `GridSearch.feed`, sans-IO). `ExpertSearcher` drives it against any async
`fetch(prefixes)` with a short-lived cache of found prefixes and negative caching of empty ones.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from node_agent.moe.uids import make_prefix, make_uid

__all__ = ["ChildMap", "ExpertSearcher", "FoundExpert", "GridSearch", "PrefixCache", "dht_prefix_fetcher"]

logger = logging.getLogger(__name__)

ChildMap = dict[int, tuple[object, ...]]
"""Children of one prefix: next coordinate -> payloads (one per announcing replica; opaque here)."""

Fetch = Callable[[list[str]], Awaitable[dict[str, ChildMap]]]
Accept = Callable[[str, tuple[object, ...]], tuple[object, ...]]


@dataclass(frozen=True, slots=True)
class FoundExpert:
    """One live expert chosen for a sample: uid, grid coordinates, gating score and its replicas' payloads."""

    uid: str
    coords: tuple[int, ...]
    score: float
    replicas: tuple[object, ...]


def _keep_all(uid: str, replicas: tuple[object, ...]) -> tuple[object, ...]:
    return replicas


class GridSearch:
    """Sans-IO exact top-k search over a sparse grid for a batch of samples.

    `scores[b][d][c]` is sample b's gating score of coordinate c in dimension d. Call `step()` to get the
    prefixes whose children are needed next (empty set: finished), look them up, `feed()` the answers (a
    prefix missing from the answer counts as empty), repeat. `accept(uid, replicas)` filters replicas of a
    complete uid (e.g. drops avoided peers); a uid left with none is skipped.
    """

    def __init__(
        self,
        name: str,
        scores: Sequence[Sequence[Sequence[float]]],
        k: int,
        beam_size: int | None = None,
        accept: Accept = _keep_all,
    ):
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.name = name
        self.scores = [[list(map(float, dim)) for dim in sample] for sample in scores]
        self.dims = len(self.scores[0]) if self.scores else 0
        if any(len(sample) != self.dims for sample in self.scores) or (self.scores and self.dims == 0):
            raise ValueError("every sample needs scores for the same, non-zero number of grid dimensions")
        self.k = k
        self.beam_size = beam_size or k
        self.accept = accept
        self.children: dict[str, ChildMap] = {}
        self.results: list[list[FoundExpert]] = [[] for _ in self.scores]
        self.rounds = 0
        self._tie = itertools.count()
        self._heaps: list[list[tuple[float, int, tuple[int, ...], tuple[object, ...]]]] = []
        self._tails: list[list[float]] = []
        for sample in self.scores:
            # tails[d]: best achievable score of dimensions d.. (the A* heuristic: admissible).
            tails = [0.0] * (self.dims + 1)
            for dim in range(self.dims - 1, -1, -1):
                tails[dim] = tails[dim + 1] + (max(sample[dim]) if sample[dim] else float("-inf"))
            self._tails.append(tails)
            self._heaps.append([(-tails[0], next(self._tie), (), ())] if tails[0] > float("-inf") else [])

    def known(self, prefix: str, children: ChildMap) -> None:
        """Tell the search the children of a prefix it has not asked for yet (e.g. from a cache)."""
        self.children[prefix] = children

    def feed(self, answers: dict[str, ChildMap], asked: Sequence[str] = ()) -> None:
        """Children found for prefixes; every prefix in `asked` that is not answered is empty."""
        for prefix in asked:
            self.children.setdefault(prefix, {})
        self.children.update(answers)

    @property
    def done(self) -> bool:
        return all(
            len(found) >= self.k or not heap for found, heap in zip(self.results, self._heaps, strict=True)
        )

    def step(self) -> set[str]:
        """Advance every unfinished sample as far as known children allow; return the prefixes needed next."""
        self.rounds += 1
        wanted: set[str] = set()
        for sample in range(len(self.scores)):
            wanted |= self._advance(sample)
        return wanted

    def _advance(self, sample: int) -> set[str]:
        heap, found, scores = self._heaps[sample], self.results[sample], self.scores[sample]
        waiting: list[tuple[float, int, tuple[int, ...], tuple[object, ...]]] = []
        held: list[tuple[float, int, tuple[int, ...], tuple[object, ...]]] = []
        wanted: set[str] = set()
        while heap and len(found) < self.k and len(waiting) < self.beam_size:
            entry = heapq.heappop(heap)
            negative_priority, _, coords, replicas = entry
            if len(coords) == self.dims:
                # Exact score: the next best unless an unexpanded prefix popped before it.
                if waiting:
                    held.append(entry)
                else:
                    found.append(
                        FoundExpert(make_uid(self.name, coords), coords, -negative_priority, replicas)
                    )
                continue
            prefix = make_prefix(self.name, coords)
            children = self.children.get(prefix)
            if children is None:
                waiting.append(entry)
                wanted.add(prefix)
                continue
            self._expand(sample, coords, children, scores, heap)
        for entry in itertools.chain(waiting, held):
            heapq.heappush(heap, entry)
        return wanted

    def _expand(self, sample: int, coords: tuple[int, ...], children: ChildMap, scores, heap) -> None:
        depth = len(coords)
        partial = sum(scores[dim][coord] for dim, coord in enumerate(coords))
        for coord, replicas in children.items():
            if not 0 <= coord < len(scores[depth]):
                continue  # announced outside the grid this gate scores: not a candidate
            child = (*coords, coord)
            if depth + 1 == self.dims:
                replicas = self.accept(make_uid(self.name, child), tuple(replicas))
                if not replicas:
                    continue
            priority = partial + scores[depth][coord] + self._tails[sample][depth + 1]
            heapq.heappush(heap, (-priority, next(self._tie), child, tuple(replicas)))


class PrefixCache:
    """Short-lived cache of prefix lookups; empty prefixes are cached too (for a shorter time by default).

    Announcements expire and servers vanish, so entries live only seconds: long enough that the steps of
    one training stretch share lookups, short enough that new servers are found quickly.
    """

    def __init__(self, ttl: float = 10.0, negative_ttl: float = 5.0, max_entries: int = 100_000):
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, ChildMap]] = {}

    def get(self, prefix: str, now: float) -> ChildMap | None:
        entry = self._entries.get(prefix)
        if entry is None:
            return None
        expires_at, children = entry
        if now >= expires_at:
            del self._entries[prefix]
            return None
        return children

    def put(self, prefix: str, children: ChildMap, now: float) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries = {p: e for p, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
        self._entries[prefix] = (now + (self.ttl if children else self.negative_ttl), children)

    def invalidate(self, prefix: str | None = None) -> None:
        if prefix is None:
            self._entries.clear()
        else:
            self._entries.pop(prefix, None)


class ExpertSearcher:
    """Drives `GridSearch` against an async `fetch(prefixes) -> {prefix: ChildMap}` (the DHT, usually).

    Each round sends the uncached prefixes of the whole batch in one `fetch` call; `max_rounds` bounds the
    traffic of a single search (samples not finished by then keep what they found).
    """

    def __init__(
        self,
        fetch: Fetch,
        cache: PrefixCache | None = None,
        max_rounds: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fetch = fetch
        self.cache = cache if cache is not None else PrefixCache()
        self.max_rounds = max_rounds
        self.clock = clock
        self.prefixes_fetched = 0

    async def find_best_experts(
        self,
        name: str,
        scores: Sequence[Sequence[Sequence[float]]],
        k: int,
        beam_size: int | None = None,
        accept: Accept = _keep_all,
    ) -> list[list[FoundExpert]]:
        """Top-`k` live experts per sample, best first (fewer if fewer are alive)."""
        search = GridSearch(name, scores, k, beam_size, accept)
        while True:
            wanted = search.step()
            if not wanted:
                break
            if search.rounds > self.max_rounds:
                logger.warning(
                    "expert search stopped after %d rounds with prefixes still unknown", self.max_rounds
                )
                break
            now = self.clock()
            missing = []
            for prefix in sorted(wanted):
                cached = self.cache.get(prefix, now)
                if cached is None:
                    missing.append(prefix)
                else:
                    search.known(prefix, cached)
            if missing:
                answers = await self.fetch(missing)
                self.prefixes_fetched += len(missing)
                now = self.clock()
                for prefix in missing:
                    self.cache.put(prefix, answers.get(prefix, {}), now)
                search.feed({p: answers[p] for p in missing if p in answers}, asked=missing)
        return search.results


def dht_prefix_fetcher(dht, latest: bool = True) -> Fetch:
    """A `fetch` for `ExpertSearcher` reading prefix announcements (`node_agent.moe.announce`) from the DHT.

    One `get_many` per round for all prefixes of the batch. Payloads are `ExpertHandle`s of the announcing
    replicas (uid = prefix + coordinate, so only those of the last dimension name real experts).
    `latest=True` merges the subkeys held by all nearest replicas of a key, so announcements stored by
    different servers on different nodes are all seen.
    """
    from node_agent.moe.announce import live_children, prefix_key
    from node_agent.moe.api import ExpertHandle

    async def fetch(prefixes: list[str]) -> dict[str, ChildMap]:
        found = await dht.get_many([prefix_key(prefix) for prefix in prefixes], latest=latest)
        answers: dict[str, ChildMap] = {}
        for prefix in prefixes:
            entries = found.get(prefix_key(prefix)) or {}
            children = live_children(entries)
            if children:
                answers[prefix] = {
                    coord: tuple(
                        ExpertHandle(f"{prefix}{coord}", a.node_id, a.endpoint, a.relays)
                        for a in announcements
                    )
                    for coord, announcements in children.items()
                }
        return answers

    return fetch
