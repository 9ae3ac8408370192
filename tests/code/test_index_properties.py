"""Property tests (hypothesis): every index kind answers as brute force does on small stores full of exact
ties and duplicates, for any k (up to and past the size) and any filter.

Coordinates come from a 5-value grid, so many items sit at the same distance from a query and many are
copies of each other: which of two tied items comes first is not defined, so each rank's true distance
is compared (in float64), and the ids must be distinct, allowed, and as many as min(k, candidates).
Derandomised: the same examples on every run and machine.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fashionrec.index import IN_PROCESS, build_index

GRID = st.integers(-2, 2).map(float)


@st.composite
def stores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    n = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 6))
    data = draw(arrays(np.float32, (n, dim), elements=GRID))
    if n > 1 and draw(st.booleans()):   # exact copies of some rows
        rows = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n))
        data[rows[: len(rows) // 2 + 1]] = data[rows[-1]]
    queries = draw(arrays(np.float32, (draw(st.integers(1, 4)), dim), elements=GRID))
    k = draw(st.integers(1, n + 3))
    allowed = draw(st.none() | arrays(np.bool_, (n,)))
    return data, queries, k, allowed


def true_distances(data: np.ndarray, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
    diff = queries.astype(np.float64)[:, None, :] - data.astype(np.float64)[idx]
    return np.linalg.norm(diff, axis=2)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(stores())
def test_every_kind_answers_as_brute_force_does(store: tuple) -> None:
    data, queries, k, allowed = store
    candidates = data.shape[0] if allowed is None else int(allowed.sum())
    want = min(k, candidates)
    d_brute, i_brute = build_index(data, "brute").query(queries, k, allowed=allowed)
    all_d = true_distances(data, queries, np.arange(data.shape[0])[None, :].repeat(len(queries), 0))
    if allowed is not None:
        all_d[:, ~allowed] = np.inf
    # brute force itself: the `want` smallest true distances, in order
    np.testing.assert_allclose(true_distances(data, queries, i_brute), np.sort(all_d, axis=1)[:, :want],
                               atol=1e-5)
    for kind in IN_PROCESS:   # milvus: tests/milvus, against a real server
        d, i = build_index(data, kind).query(queries, k, allowed=allowed)
        assert i.shape == d.shape == (len(queries), want), kind
        assert all(len(set(row)) == want for row in i.tolist()), kind
        if allowed is not None:
            assert allowed[i].all(), kind
        np.testing.assert_allclose(true_distances(data, queries, i), true_distances(data, queries, i_brute),
                                   atol=1e-5, err_msg=kind)
        np.testing.assert_allclose(d, d_brute, atol=1e-3, err_msg=kind)
        assert np.all(np.diff(d, axis=1) >= -1e-6), kind
