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
