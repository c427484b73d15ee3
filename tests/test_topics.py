"""Event types and subscription patterns (CONTRACT.md section 3, `events` and `type`)."""

import time

import pytest

from subscriptions.topics import is_valid_event_type, is_valid_pattern, matches


@pytest.mark.parametrize(
    "event_type",
    [
        "order",
        "order.created",
        "user.profile.updated",
        "a_b-c.0-9",
        "x" * 128,
        ".".join(["w"] * 10),
        ".".join(["word"] * 9 + ["x" * 83]),  # exactly 128 characters in 10 words
    ],
)
def test_it_accepts_a_well_formed_event_type(event_type: str) -> None:
    assert is_valid_event_type(event_type)


@pytest.mark.parametrize(
    "event_type",
    [
        "",
        ".",
        "order.",
        ".order",
        "order..created",
        "Order.created",
        "order.créé",
        "order created",
        "order/created",
        "order.*",
        "*.created",
        "#",
        "order.#",
        "x" * 129,
        ".".join(["w"] * 11),
        "order.created\n",
    ],
)
def test_it_rejects_a_malformed_event_type(event_type: str) -> None:
    assert not is_valid_event_type(event_type)


@pytest.mark.parametrize(
    "pattern",
    [
        "order.created",
        "order.*",
        "*.completed",
        "*",
        "#",
        "order.#",
        "order.#.done",
        "#.done",
        "*.*.*",
        "#.#",
        ".".join(["*"] * 10),
        "x" * 128,
    ],
)
def test_it_accepts_a_well_formed_pattern(pattern: str) -> None:
    assert is_valid_pattern(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "order.",
        ".order",
        "order..*",
        "order*",
        "ord*er.created",
        "order.#done",
        "**",
        "##",
        "ORDER.*",
        "order.?",
        "x" * 129,
        ".".join(["*"] * 11),
        "order.*\n",
        "order.created\n",
    ],
)
def test_it_rejects_a_malformed_pattern(pattern: str) -> None:
    assert not is_valid_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "event_type"),
    [
        ("order.created", "order.created"),
        ("order.*", "order.created"),
        ("order.*", "order.refunded"),
        ("*.completed", "order.completed"),
        ("*.completed", "payment.completed"),
        ("*", "order"),
        ("#", "order"),
        ("#", "order.created"),
        ("#", "a.b.c.d.e.f.g.h.i.j"),
        ("order.#", "order"),
        ("order.#", "order.created"),
        ("order.#", "order.line.item.added"),
        ("order.#.done", "order.done"),
        ("order.#.done", "order.shipping.done"),
        ("order.#.done", "order.a.b.c.done"),
        ("#.done", "done"),
        ("#.done", "order.item.done"),
        ("*.*", "order.created"),
        ("#.*", "order"),
        ("*.#", "order.created.late"),
        ("order.*.#", "order.created"),
        ("#.#", "order.created"),
    ],
)
def test_a_pattern_matches_the_event_types_it_describes(pattern: str, event_type: str) -> None:
    assert matches(pattern, event_type)


@pytest.mark.parametrize(
    ("pattern", "event_type"),
    [
        ("order.created", "order.updated"),
        ("order.created", "order.created.late"),
        ("order.created", "order"),
        ("order.*", "order"),
        ("order.*", "order.line.added"),
        ("order.*", "orders.created"),
        ("order.*", "payment.created"),
        ("*.completed", "completed"),
        ("*.completed", "order.item.completed"),
        ("*.completed", "order.completed.late"),
        ("*", "order.created"),
        ("order.#", "orders"),
        ("order.#", "orders.created"),
        ("order.#", "payment.order.created"),
        ("order.#.done", "order"),
        ("order.#.done", "order.done.later"),
        ("order.#.done", "payment.x.done"),
        ("#.done", "undone"),
        ("*.*", "order"),
        ("order.*.#", "order"),
    ],
)
def test_a_pattern_does_not_match_other_event_types(pattern: str, event_type: str) -> None:
    assert not matches(pattern, event_type)


def test_a_word_is_compared_whole_not_as_a_prefix() -> None:
    assert not matches("order", "orders")
    assert not matches("orders", "order")
    assert not matches("order.create", "order.created")


def test_many_hashes_against_the_longest_event_type_still_answer_quickly() -> None:
    # Backtracking over `#` is exponential in the worst case; the 10-word limit keeps it bounded.
    pattern = ".".join(["#"] * 9 + ["never"])
    event_type = ".".join(["w"] * 10)
    start = time.monotonic()
    assert not matches(pattern, event_type)
    assert time.monotonic() - start < 1.0
    assert matches(".".join(["#"] * 9 + ["w"]), event_type)
