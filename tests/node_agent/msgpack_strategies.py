"""Hypothesis strategies for hostile input: arbitrary msgpack-able structures, near-valid tensor headers."""

from __future__ import annotations

from hypothesis import strategies as st

from node_agent.tensor_codec import DTYPES, Compression

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=64)
)

#: Anything msgpack can carry: None/bool/int/float/str/bytes, nested in lists and string/int-keyed maps.
msgpack_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(-5, 5), children, max_size=5)
    ),
    max_leaves=25,
)

_FIELD_NAMES = ("dtype", "shape", "comp", "data", "scales", "low", "scale")

#: Maps that look like tensor headers, each field either plausible or arbitrary.
tensor_headers = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(sorted(DTYPES)) | msgpack_values,
        "shape": st.lists(st.integers(-2, 6), max_size=4) | msgpack_values,
        "comp": st.sampled_from([c.value for c in Compression]) | msgpack_values,
        "data": st.binary(max_size=300) | msgpack_values,
        "scales": st.binary(max_size=16) | msgpack_values,
        "low": st.floats() | msgpack_values,
        "scale": st.floats() | msgpack_values,
    },
)

hostile_headers = tensor_headers | msgpack_values
