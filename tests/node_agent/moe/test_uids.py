from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.moe.uids import (
    expand_pattern,
    expand_patterns,
    is_valid_prefix,
    is_valid_uid,
    make_prefix,
    make_uid,
    parse_prefix,
    parse_uid,
    pattern_grid,
    uid_prefix_chain,
)


def test_parse_and_make_uid_round_trip():
    assert parse_uid("ffn.3.14") == ("ffn", (3, 14))
    assert make_uid("ffn", (3, 14)) == "ffn.3.14"


@pytest.mark.parametrize(
    "bad",
    ["", "ffn", "ffn.", "3.4", "ffn.-1", "ffn.01", "ffn.a", "ffn..3", "f f.1", "ffn.1.2.3.4.5.6.7.8.9", 7],
)
def test_invalid_uids_rejected(bad):
    assert not is_valid_uid(bad)
    with pytest.raises(ValueError):
        parse_uid(bad)


def test_prefixes():
    assert parse_prefix("ffn.") == ("ffn", ())
    assert parse_prefix("ffn.3.") == ("ffn", (3,))
    assert make_prefix("ffn", (3,)) == "ffn.3."
    assert not is_valid_prefix("ffn")
    assert not is_valid_prefix("ffn.3.x.")  # a name segment after a coordinate
    assert uid_prefix_chain("ffn.3.14") == [("ffn.", 3), ("ffn.3.", 14)]


def test_dotted_grid_names_for_one_grid_per_block():
    assert parse_uid("lm.b3.1.2") == ("lm.b3", (1, 2))
    assert parse_prefix("lm.b3.") == ("lm.b3", ())
    assert uid_prefix_chain("lm.b3.1.2") == [("lm.b3.", 1), ("lm.b3.1.", 2)]
    assert expand_pattern("lm.b0.[0:2].1") == ["lm.b0.0.1", "lm.b0.1.1"]
    for bad in ("lm.b3", "lm.3b.1", "lm..1", "lm.b3.1.x", "lm.b-3!.1"):
        assert not is_valid_uid(bad)


def test_expand_patterns():
    assert expand_pattern("ffn.[0:2].[0:2]") == ["ffn.0.0", "ffn.0.1", "ffn.1.0", "ffn.1.1"]
    assert expand_pattern("ffn.[5,1].2") == ["ffn.1.2", "ffn.5.2"]
    assert expand_pattern("ffn.7") == ["ffn.7"]
    assert expand_patterns("ffn.[0:2] ffn.1 att.0") == ["ffn.0", "ffn.1", "att.0"]
    assert pattern_grid("ffn.[0:4].[0:2]") == ("ffn", [[0, 1, 2, 3], [0, 1]])


@pytest.mark.parametrize(
    "bad", ["ffn.[3:1]", "ffn.[0:4", "ffn.[a:b]", "1ffn.[0:2]", "ffn.[0:100000].[0:100000]"]
)
def test_bad_patterns_rejected(bad):
    with pytest.raises(ValueError):
        expand_pattern(bad)


@given(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
)
def test_uid_chain_property(name, coords):
    uid = make_uid(name, coords)
    assert parse_uid(uid) == (name, tuple(coords))
    chain = uid_prefix_chain(uid)
    assert [c for _, c in chain] == coords
    for prefix, coord in chain:
        assert is_valid_prefix(prefix)
        assert uid.startswith(prefix + str(coord))
