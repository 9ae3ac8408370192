"""Index kinds agree with each other and with an exact cosine ranking; bad input is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

from fashionrec.core.errors import DataError
from fashionrec.index import IN_PROCESS as KINDS
from fashionrec.index import build_index


def normalised(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dim", [8, 64])
def test_kinds_agree_on_random_normalised_data(dim: int) -> None:
    data, queries = normalised(500, dim, 0), normalised(40, dim, 1)
    results = {kind: build_index(data, kind).query(queries, 10) for kind in KINDS}
    (d_ball, i_ball), (d_brute, i_brute) = results["balltree"], results["brute"]
    assert np.array_equal(i_ball, i_brute)
    np.testing.assert_allclose(d_ball, d_brute, atol=1e-5)
    # Euclidean order on unit vectors is cosine order: the reference ranking by dot product.
    expected = np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(i_brute, expected)
    np.testing.assert_allclose(d_brute ** 2, 2 - 2 * np.take_along_axis(queries @ data.T, expected, 1),
                               atol=1e-5)
    assert np.all(np.diff(d_brute, axis=1) >= 0)


def test_each_item_finds_itself_first() -> None:
    data = normalised(200, 16, 2)
    for kind in KINDS:
        dist, idx = build_index(data, kind, **({"leaf_size": 5} if kind == "balltree" else {})).query(data, 3)
        assert np.array_equal(idx[:, 0], np.arange(200)), kind
        assert np.allclose(dist[:, 0], 0.0, atol=1e-3), kind


def test_brute_blocks_give_the_same_answer() -> None:
    data, queries = normalised(300, 12, 3), normalised(50, 12, 4)
    a = build_index(data, "brute", block_size=7).query(queries, 5)
    b = build_index(data, "brute").query(queries, 5)
    assert np.array_equal(a[1], b[1])


def test_k_larger_than_inventory_is_clamped_and_single_vectors_work() -> None:
    data = normalised(4, 8, 5)
    for kind in KINDS:
        index = build_index(data, kind)
        dist, idx = index.query(data[0], 10)
        assert idx.shape == (1, 4) and sorted(idx[0].tolist()) == [0, 1, 2, 3]
        assert index.size == 4 and index.dim == 8


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_input_is_refused_with_a_clear_error(kind: str) -> None:
    data = normalised(10, 4, 6)
    index = build_index(data, kind)
    with pytest.raises(DataError, match="dimension 5 does not match"):
        index.query(normalised(2, 5, 7), 3)
    with pytest.raises(DataError, match="k must be a positive integer"):
        index.query(data[:1], 0)
    bad = data.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        build_index(bad, kind)
    with pytest.raises(DataError, match="no vectors"):
        build_index(np.zeros((0, 4)), kind)


def test_unknown_kind_or_parameter_names_it() -> None:
    with pytest.raises(DataError, match="'annoy' is unknown"):
        build_index(normalised(5, 4, 0), "annoy")
    with pytest.raises(DataError, match="leaf_sise"):
        build_index(normalised(5, 4, 0), "balltree", leaf_sise=10)


@pytest.mark.parametrize("dims", [1, 3, 16])
@pytest.mark.parametrize("k", [1, 7, 120])
def test_balltree_on_principal_coordinates_finds_exactly_what_brute_force_finds(dims: int, k: int) -> None:
    """The tree on a few principal coordinates (+ the residual) only bounds distances; the answer must
    still be the exhaustive one, on clustered data, spread-out data, exact duplicates and far queries."""
    rng = np.random.default_rng(dims * 100 + k)
    centres = rng.normal(size=(6, 48))
    clustered = centres[rng.integers(0, 6, 240)] + 0.3 * rng.normal(size=(240, 48))
    data = np.vstack([clustered, rng.normal(size=(60, 48)), clustered[:20]]).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = np.vstack([normalised(30, 48, 9), data[:5], -data[5:10]])
    tree = build_index(data, "balltree", dims=dims, leaf_size=8)
    assert tree.dims == dims
    d_tree, i_tree = tree.query(queries, k)
    d_brute, i_brute = build_index(data, "brute").query(queries, k)
    # The same neighbours up to the order of exact ties (the duplicates: float rounding decides those,
    # in brute force too): each rank's true distance, in float64, is the exhaustive search's.
    data64, queries64 = data.astype(np.float64), queries.astype(np.float64)
    true = np.linalg.norm(queries64[:, None, :] - data64[None], axis=2)
    np.testing.assert_allclose(np.take_along_axis(true, i_tree, 1), np.take_along_axis(true, i_brute, 1),
                               atol=1e-6)
    assert all(len(set(row)) == k for row in i_tree.tolist())
    np.testing.assert_allclose(d_tree, d_brute, atol=1e-3)
    assert np.all(np.diff(d_tree, axis=1) >= 0)


def test_balltree_uses_the_full_embeddings_when_reduction_would_not_help() -> None:
    assert build_index(normalised(30, 8, 0), "balltree", dims=8).dims is None     # dims >= dimension
    assert build_index(normalised(5, 32, 0), "balltree", dims=16).dims is None    # more dims than items
    assert build_index(normalised(30, 8, 0), "balltree", dims=None).dims is None
    assert build_index(normalised(30, 8, 0), "balltree", dims=3).dims == 3


@pytest.mark.parametrize("dims", [0, -4, 2.5, "64", True])
def test_bad_balltree_dims_is_refused_naming_the_key(dims: object) -> None:
    with pytest.raises(DataError, match="index.balltree.dims must be a positive integer"):
        build_index(normalised(30, 8, 0), "balltree", dims=dims)


def test_balltree_lifts_rows_block_by_block_with_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from fashionrec.index import balltree

    data, queries = normalised(300, 24, 11), normalised(25, 24, 12)
    whole = build_index(data, "balltree", dims=4).query(queries, 6)
    monkeypatch.setattr(balltree, "LIFT_BLOCK", 7)   # 43 blocks, the last one short
    blocks = build_index(data, "balltree", dims=4).query(queries, 6)
    assert np.array_equal(whole[1], blocks[1])
    np.testing.assert_allclose(whole[0], blocks[0], atol=1e-6)
    assert np.array_equal(blocks[1], build_index(data, "brute").query(queries, 6)[1])


def true_distances(data: np.ndarray, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Each returned item's distance to its query, in float64 (what a rank must match, whatever the tie)."""
    diff = queries.astype(np.float64)[:, None, :] - data.astype(np.float64)[idx]
    return np.linalg.norm(diff, axis=2)


def with_duplicates_and_ties(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors where a quarter of the rows repeat others exactly (ties at every distance of theirs)."""
    data = normalised(n, dim, seed)
    rng = np.random.default_rng(seed + 1)
    data[rng.choice(n, n // 4, replace=False)] = data[rng.choice(n, n // 4, replace=True)]
    return data


FAST = {"hnsw": {"M": 8, "ef_construction": 32}}   # a smaller graph: these tests check answers, not recall


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_duplicates_ties_and_k_equal_to_the_size_match_brute_force(kind: str) -> None:
    """k = size returns every item once, in distance order; with exact duplicates each rank's distance is
    brute force's (which of two equal items comes first is a tie, so ids are compared as sets)."""
    data = with_duplicates_and_ties(300, 16, 20)
    queries = np.vstack([data[:10], normalised(10, 16, 21)])
    brute = build_index(data, "brute")
    index = build_index(data, kind, **FAST.get(kind, {}))
    d, i = index.query(queries, 300)
    d_b, i_b = brute.query(queries, 300)
    assert i.shape == (20, 300)
    assert all(sorted(row) == list(range(300)) for row in i.tolist())
    assert np.all(np.diff(d, axis=1) >= -1e-6)
    np.testing.assert_allclose(true_distances(data, queries, i), true_distances(data, queries, i_b),
                               atol=1e-5)
    np.testing.assert_allclose(d, d_b, atol=1e-3)
    # top 10: the same set of distances as brute force, and every query that is an item finds a copy of itself
    d10, i10 = index.query(queries, 10)
    np.testing.assert_allclose(true_distances(data, queries, i10), true_distances(data, queries, i_b[:, :10]),
                               atol=1e-5)
    assert np.allclose(d10[:10, 0], 0.0, atol=1e-3)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("share", [0.0, 0.004, 0.05, 0.5, 1.0])
def test_filtered_queries_return_only_allowed_items_as_brute_force_does(kind: str, share: float) -> None:
    data, queries = normalised(1000, 24, 30), normalised(25, 24, 31)
    allowed = np.random.default_rng(int(share * 1000)).random(1000) < share
    kept = int(allowed.sum())
    d, i = build_index(data, kind, **FAST.get(kind, {})).query(queries, 10, allowed=allowed)
    d_b, i_b = build_index(data, "brute").query(queries, 10, allowed=allowed)
    assert i.shape == (25, min(10, kept)) and d.shape == i.shape
    assert allowed[i].all()
    np.testing.assert_allclose(true_distances(data, queries, i), true_distances(data, queries, i_b),
                               atol=1e-5)
    if kept:   # brute force's own answer is the exact top-k of the kept items
        exact = np.argsort(np.where(allowed, -(queries @ data.T), np.inf), axis=1, kind="stable")
        assert np.array_equal(i_b, exact[:, :i_b.shape[1]])


def test_hnsw_filtered_graph_walk_keeps_recall() -> None:
    """A filter that keeps half of a larger store is searched by the graph walk itself (no exact scan):
    its answers are all allowed and recall against brute force stays high."""
    from fashionrec.index.recall import overlap

    data, queries = normalised(12000, 8, 40), normalised(50, 8, 41)
    allowed = np.random.default_rng(42).random(12000) < 0.5
    index = build_index(data, "hnsw", M=8, ef_construction=32, ef_search=64)
    assert int(allowed.sum()) ** 2 > 2 * index.M * index.ef_search * index.size   # the walk, not the scan
    _, i = index.query(queries, 10, allowed=allowed)
    _, i_b = build_index(data, "brute").query(queries, 10, allowed=allowed)
    assert allowed[i].all() and i.shape == (50, 10)
    assert overlap(i, i_b) >= 0.9


def test_hnsw_a_selective_filter_is_answered_exactly_even_by_a_poor_graph() -> None:
    """A filter keeping few items (a category for kids: well under sqrt(2 M ef size) of them) is ranked by
    an exact scan of the kept items, so its answer is brute force's even where the graph itself is poor."""
    from fashionrec.index.recall import overlap

    data, queries = normalised(5000, 16, 50), normalised(40, 16, 51)
    allowed = np.zeros(5000, bool)
    allowed[np.random.default_rng(52).choice(5000, 40, replace=False)] = True
    index = build_index(data, "hnsw", M=4, ef_construction=8, ef_search=8)
    brute = build_index(data, "brute")
    assert overlap(index.query(queries, 10)[1], brute.query(queries, 10)[1]) < 0.5   # a poor graph
    assert index.scans(40, 10) and not index.scans(5000, 10)
    d, i = index.query(queries, 10, allowed=allowed)
    d_b, i_b = brute.query(queries, 10, allowed=allowed)
    assert np.array_equal(i, i_b)
    np.testing.assert_allclose(d, d_b, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_bad_filter_is_refused_naming_it(kind: str) -> None:
    index = build_index(normalised(10, 4, 6), kind)
    for bad in (np.ones(9, bool), np.ones(10, int), [True] * 10 + [False]):
        with pytest.raises(DataError, match="allowed must be a boolean vector of 10 items"):
            index.query(normalised(1, 4, 7), 3, allowed=bad)


def test_hnsw_graph_file_must_be_a_faiss_graph_of_these_embeddings(tmp_path) -> None:
    data = normalised(200, 8, 50)
    graph = build_index(data, "hnsw").save(tmp_path / "index.hnsw")
    loaded = build_index(data, "hnsw", graph_file=graph)
    assert np.array_equal(loaded.query(data[:5], 3)[1], build_index(data, "hnsw").query(data[:5], 3)[1])
    extra = normalised(20, 8, 51)
    grown = build_index(np.vstack([data, extra]), "hnsw", graph_file=graph)   # inserts only the new rows
    assert grown.size == 220
    assert np.array_equal(grown.query(extra, 1)[1][:, 0], np.arange(200, 220))
    with pytest.raises(DataError, match="not the embeddings it is loaded with"):
        build_index(normalised(200, 8, 52), "hnsw", graph_file=graph)
    with pytest.raises(DataError, match="holds 200 items, more than the 100"):
        build_index(data[:100], "hnsw", graph_file=graph)
    with pytest.raises(DataError, match="dimension 8 does not match the embeddings' 4"):
        build_index(normalised(200, 4, 53), "hnsw", graph_file=graph)
    foreign = tmp_path / "hnswlib.bin"
    foreign.write_bytes(b"\x00" * 64)   # e.g. a graph written by hnswlib, before Faiss
    with pytest.raises(DataError, match="cannot load the hnsw graph"):
        build_index(data, "hnsw", graph_file=foreign)
    with pytest.raises(DataError, match="graph file not found"):
        build_index(data, "hnsw", graph_file=tmp_path / "missing")


def test_a_kind_whose_library_is_missing_is_refused_naming_the_kind_and_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving image installs no Faiss unless asked (images.serve_extras): `hnsw` then fails with the
    extra to install, never a bare ImportError; the exact kinds need nothing beyond NumPy."""
    import sys

    from fashionrec.core.errors import MissingDependency
    from fashionrec.index import require_kind

    data = normalised(50, 8, 13)
    monkeypatch.setitem(sys.modules, "faiss", None)   # not importable, as where the extra is absent
    with pytest.raises(MissingDependency) as err:
        build_index(data, "hnsw")
    assert not isinstance(err.value, ImportError)
    assert "index kind 'hnsw'" in str(err.value) and "`hnsw` extra" in str(err.value)
    assert "pip install 'fashionrec[hnsw]'" in str(err.value)
    for kind in ("balltree", "brute"):
        require_kind(kind)
        assert build_index(data, kind).query(data[:2], 3)[1][:, 0].tolist() == [0, 1]
