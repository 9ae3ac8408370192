"""Property tests of the parsers: `-s key=value` overrides round trip through parse_override, set_dotted and
dotted_leaves; `crop` either parses to a proper box or is refused as the client's fault."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fashionrec.core.config import dotted_leaves, parse_override, set_dotted
from fashionrec.core.errors import BadRequest, ParamsError
from fashionrec.serve.recommend import parse_crop

segment = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
dotted = st.lists(segment, min_size=1, max_size=4).map(".".join)
# floats as the CLI writes them (json.dumps); PyYAML reads an exponent without a dot as text, so none here
plain_float = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: "e" not in repr(f))
# text in the Basic Multilingual Plane: json.dumps escapes others as surrogate pairs, which PyYAML keeps
# as two code points (a known limit of the CLI's flags, not of params.yaml)
bmp_text = st.text(st.characters(max_codepoint=0xFFFF), max_size=20)
scalar = st.none() | st.booleans() | st.integers() | plain_float | bmp_text
value = scalar | st.lists(scalar, max_size=4)


@given(dotted, value)
def test_override_round_trips(key: str, v: Any) -> None:
    """What the CLI writes for a flag (`key=json`) parses back to the same key and value."""
    assert parse_override(f"{key}={json.dumps(v)}") == (key, v)


def prefix_free(keys: list[str]) -> bool:
    return not any(a != b and b.startswith(f"{a}.") for a in keys for b in keys)


@given(st.dictionaries(dotted, scalar, max_size=6).filter(lambda d: prefix_free(list(d))))
def test_set_dotted_then_dotted_leaves_is_identity(flat: dict[str, Any]) -> None:
    tree: dict[str, Any] = {}
    for key, v in flat.items():
        set_dotted(tree, key, v)
    assert dotted_leaves(tree) == flat


@given(dotted, dotted, scalar, scalar)
def test_a_later_override_wins(key: str, sub: str, first: Any, second: Any) -> None:
    tree: dict[str, Any] = {}
    set_dotted(tree, key, first)
    set_dotted(tree, key, second)
    assert dotted_leaves(tree) == {key: second}
    if second is not None:   # a value is not a section: overriding below it is refused by name
        with pytest.raises(ParamsError, match="is not a section"):
            set_dotted(tree, f"{key}.{sub}", first)
    else:                    # an empty entry becomes one
        set_dotted(tree, f"{key}.{sub}", first)
        assert dotted_leaves(tree) == {f"{key}.{sub}": first}


@given(st.text(max_size=30))
def test_override_parser_accepts_or_refuses_in_one_error(text: str) -> None:
    try:
        key, _ = parse_override(text)
    except ParamsError as exc:
        assert "override" in str(exc)
    else:
        assert key and all(key.split("."))


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(finite, finite, finite, finite, st.sampled_from([",", ", ", " ", " ,"]))
def test_crop_parses_a_proper_box(a: float, b: float, c: float, d: float, sep: str) -> None:
    left, right = sorted((a, c))
    top, bottom = sorted((b, d))
    text = sep.join(repr(v) for v in (left, top, right, bottom))
    if right > left and bottom > top:
        assert parse_crop(text) == (left, top, right, bottom)
    else:
        with pytest.raises(BadRequest) as exc:
            parse_crop(text)
        assert exc.value.status == 422 and exc.value.kind == "bad_crop"


@given(st.text(max_size=40))
def test_crop_is_a_box_or_a_client_error(text: str) -> None:
    try:
        box = parse_crop(text)
    except BadRequest as exc:
        assert exc.status == 422 and exc.kind == "bad_crop"
        return
    if box is not None:
        left, top, right, bottom = box
        assert all(math.isfinite(v) for v in box) and right > left and bottom > top
    else:
        assert not text.strip()
