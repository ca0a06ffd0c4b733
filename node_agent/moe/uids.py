"""Expert uids on a grid (Learning@home, section 3.1): `ffn.3.14` = grid name `ffn`, coordinates (3, 14).

Pure string logic, no torch, no I/O. Terms used across the MoE code:

* uid: `<name>.<c1>.<c2>...`, name like `ffn` (letter first, then letters/digits/`_`/`-`), at least one
  non-negative integer coordinate, at most `MAX_GRID_DIMS` of them. A name may have several dotted
  segments, each starting with a letter (`lm.b3.1.2`: grid `lm.b3`, one grid per block of a language
  model); coordinates are digits only, so the split between name and coordinates is unambiguous.
* prefix: the name plus zero or more leading coordinates, written WITH a trailing delimiter: `ffn.`,
  `ffn.3.`. A prefix of length d is followed by coordinate d+1. The DHT keys announcing experts are built
  from prefixes (`node_agent.moe.announce`); beam search walks them one coordinate at a time.
* pattern: a uid whose coordinates may be ranges `[a:b]` (half-open, like Python) or lists `[1,5,7]`:
  `ffn.[0:4].[0:4]` expands to the 16 uids `ffn.0.0` .. `ffn.3.3`.
"""

from __future__ import annotations

import itertools
import re

UID_DELIMITER = "."
MAX_GRID_DIMS = 8
MAX_COORDINATE = 2**31 - 1
MAX_UID_LENGTH = 128
MAX_PATTERN_EXPERTS = 65536

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")
_COORD_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_RANGE_RE = re.compile(r"\[\s*(\d+)\s*:\s*(\d+)\s*\]")
_LIST_RE = re.compile(r"\[\s*\d+(\s*,\s*\d+)*\s*\]")


def _parse_coordinate(text: str) -> int:
    if not _COORD_RE.fullmatch(text) or int(text) > MAX_COORDINATE:
        raise ValueError(f"bad grid coordinate {text!r}: expected an integer in [0, {MAX_COORDINATE}]")
    return int(text)


def _split_name(parts: list[str], text: str, what: str) -> tuple[str, list[str]]:
    """Leading segments that start with a letter form the (dotted) name; the rest are coordinates."""
    count = 0
    while count < len(parts) and parts[count][:1].isalpha():
        count += 1
    name_parts = parts[:count]
    if not name_parts or not all(_NAME_RE.fullmatch(part) for part in name_parts):
        raise ValueError(f"bad {what} {text!r}: grid name must match {_NAME_RE.pattern} (dotted segments)")
    return UID_DELIMITER.join(name_parts), parts[count:]


def parse_uid(uid: str) -> tuple[str, tuple[int, ...]]:
    """Split `ffn.3.14` into `("ffn", (3, 14))`; raise ValueError with the reason if it is not a grid uid."""
    if not isinstance(uid, str) or not 0 < len(uid) <= MAX_UID_LENGTH:
        raise ValueError(f"bad expert uid {uid!r}: expected a non-empty string of at most {MAX_UID_LENGTH}")
    name, coords = _split_name(uid.split(UID_DELIMITER), uid, "expert uid")
    if not 1 <= len(coords) <= MAX_GRID_DIMS:
        raise ValueError(f"bad expert uid {uid!r}: expected 1..{MAX_GRID_DIMS} coordinates")
    return name, tuple(_parse_coordinate(c) for c in coords)


def is_valid_uid(uid: object) -> bool:
    if not isinstance(uid, str):
        return False
    try:
        parse_uid(uid)
    except ValueError:
        return False
    return True


def make_uid(name: str, coords: tuple[int, ...] | list[int]) -> str:
    """Inverse of `parse_uid`; validates the result."""
    uid = UID_DELIMITER.join([name, *(str(int(c)) for c in coords)])
    parse_uid(uid)
    return uid


def parse_prefix(prefix: str) -> tuple[str, tuple[int, ...]]:
    """Split `ffn.3.` into `("ffn", (3,))`, `ffn.` into `("ffn", ())`; the trailing delimiter is required."""
    if not isinstance(prefix, str) or not prefix.endswith(UID_DELIMITER) or len(prefix) > MAX_UID_LENGTH:
        raise ValueError(f"bad uid prefix {prefix!r}: expected e.g. 'ffn.' or 'ffn.3.'")
    name, coords = _split_name(prefix[:-1].split(UID_DELIMITER), prefix, "uid prefix")
    if len(coords) >= MAX_GRID_DIMS:
        raise ValueError(f"bad uid prefix {prefix!r}")
    return name, tuple(_parse_coordinate(c) for c in coords)


def is_valid_prefix(prefix: object) -> bool:
    if not isinstance(prefix, str):
        return False
    try:
        parse_prefix(prefix)
    except ValueError:
        return False
    return True


def make_prefix(name: str, coords: tuple[int, ...] | list[int] = ()) -> str:
    """`make_prefix("ffn", (3,))` -> `"ffn.3."`; validates the result."""
    prefix = UID_DELIMITER.join([name, *(str(int(c)) for c in coords)]) + UID_DELIMITER
    parse_prefix(prefix)
    return prefix


def uid_prefix_chain(uid: str) -> list[tuple[str, int]]:
    """Every proper prefix of `uid` paired with the coordinate that follows it.

    `ffn.3.14` -> `[("ffn.", 3), ("ffn.3.", 14)]`: exactly the (DHT prefix key, subkey) pairs a server
    announces so that beam search can descend the grid one dimension at a time.
    """
    name, coords = parse_uid(uid)
    return [(make_prefix(name, coords[:depth]), coords[depth]) for depth in range(len(coords))]


def _parse_pattern_part(part: str) -> list[int]:
    if match := _RANGE_RE.fullmatch(part):
        low, high = int(match.group(1)), int(match.group(2))
        if not 0 <= low < high <= MAX_COORDINATE + 1:
            raise ValueError(f"bad range {part!r}: expected [low:high] with low < high")
        return list(range(low, high))
    if _LIST_RE.fullmatch(part):
        return sorted({_parse_coordinate(item.strip()) for item in part[1:-1].split(",")})
    return [_parse_coordinate(part)]


def pattern_grid(pattern: str) -> tuple[str, list[list[int]]]:
    """Parse `ffn.[0:4].[0:2]` into `("ffn", [[0, 1, 2, 3], [0, 1]])`: the name and each axis' coordinates."""
    name, parts = _split_name(pattern.strip().split(UID_DELIMITER), pattern, "expert pattern")
    if not 1 <= len(parts) <= MAX_GRID_DIMS:
        raise ValueError(f"bad expert pattern {pattern!r}: expected 1..{MAX_GRID_DIMS} coordinates")
    axes = [_parse_pattern_part(part.strip()) for part in parts]
    total = 1
    for axis in axes:
        total *= len(axis)
    if total > MAX_PATTERN_EXPERTS:
        raise ValueError(f"expert pattern {pattern!r} expands to {total} uids (max {MAX_PATTERN_EXPERTS})")
    return name, axes


def expand_pattern(pattern: str) -> list[str]:
    """All uids matched by a pattern, in grid order: `ffn.[0:2].5` -> `["ffn.0.5", "ffn.1.5"]`."""
    name, axes = pattern_grid(pattern)
    return [make_uid(name, coords) for coords in itertools.product(*axes)]


def expand_patterns(patterns: str) -> list[str]:
    """For the CLI: several patterns separated by whitespace, expanded in order, duplicates dropped."""
    seen: dict[str, None] = {}
    for pattern in patterns.split():
        for uid in expand_pattern(pattern):
            seen.setdefault(uid, None)
    return list(seen)
