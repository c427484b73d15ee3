"""The shortcut past DRF for plain event bodies never accepts what the serializer refuses, and returns
exactly what the serializer would (issue 6: the serializer cost a tenth of an ingest request's CPU).

No database: both sides are pure functions of the body.
"""

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from webhooks.serializers import EventCreateSerializer, plainly_valid_event

WORDS = st.sampled_from(["order", "created", "a", "x-1", "b_2", "webhook", "ORDER", "", "*", "#", " ", "é"])
TEXT = st.one_of(
    st.builds(".".join, st.lists(WORDS, min_size=1, max_size=12)),
    st.text(max_size=20),
    st.sampled_from(["order.created", " order.created", "order.created\n", "a\x00b", "\ud800", "acme", " acme "]),
)
TRICKY = st.sampled_from([None, True, 0, 1.5, float("inf"), float("-inf"), float("nan"), 10**30, "x", "\x00", "\ud800"])
JSON = st.recursive(
    TRICKY | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
VALUES = st.one_of(TEXT, JSON, st.dictionaries(TEXT, JSON, max_size=3))
TYPES = st.sampled_from(["order.created", "a", "webhook.ping", "order.*", "Order", ""]) | TEXT
TENANTS = st.one_of(st.sampled_from(["acme", " acme ", "acme\n", "", "  ", "a\x00", "\udc00", None, 7, True]), TEXT)
# Mostly near-valid bodies, so that both verdicts are common; then anything at all.
BODIES = st.one_of(
    st.fixed_dictionaries(
        {"type": TYPES, "data": st.dictionaries(TEXT, JSON, max_size=3)},
        optional={"tenant": TENANTS, "other": JSON},
    ),
    st.fixed_dictionaries({}, optional={"type": VALUES, "data": VALUES, "tenant": TENANTS}),
    JSON,
)


def serializer_verdict(body: object) -> dict | None:
    serializer = EventCreateSerializer(data=body)
    return dict(serializer.validated_data) if serializer.is_valid() else None


@hypothesis_settings(max_examples=600, deadline=None, database=None)
@given(BODIES)
def test_the_shortcut_accepts_only_what_the_serializer_accepts_and_returns_the_same(body: object) -> None:
    shortcut = plainly_valid_event(body)

    if shortcut is not None:
        assert serializer_verdict(body) == shortcut


def test_plain_bodies_take_the_shortcut() -> None:
    assert plainly_valid_event({"type": "order.created", "data": {"id": 1}}) == {
        "type": "order.created",
        "data": {"id": 1},
    }
    assert plainly_valid_event({"type": "order.created", "data": {}, "tenant": "acme"}) == {
        "type": "order.created",
        "data": {},
        "tenant": "acme",
    }
    assert plainly_valid_event({"type": "order.created", "data": {}, "tenant": None}) == {
        "type": "order.created",
        "data": {},
        "tenant": None,
    }


def test_bodies_the_serializer_must_word_an_error_for_do_not() -> None:
    for body in (
        {"type": "webhook.test", "data": {}},  # reserved prefix
        {"type": "order.*", "data": {}},
        {"type": "order.created", "data": [1]},
        {"type": "order.created", "data": {"x": "a\x00b"}},
        {"type": "order.created", "data": {"n": [float("inf")]}},  # what 1e999 parses as
        {"type": "order.created", "data": {}, "tenant": ""},
        {"type": "order.created", "data": {}, "tenant": "a\x00"},
        {"type": "order.created", "data": {}, "tenant": "\udc00"},
        {"type": "order.created", "data": {}, "tenant": 7},
        {"data": {}},
        ["order.created"],
    ):
        assert plainly_valid_event(body) is None, body
        assert serializer_verdict(body) is None, body


def test_a_tenant_the_serializer_would_trim_is_left_to_it() -> None:
    body = {"type": "order.created", "data": {}, "tenant": " acme "}

    assert plainly_valid_event(body) is None
    assert serializer_verdict(body) == {"type": "order.created", "data": {}, "tenant": "acme"}
