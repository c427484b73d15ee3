"""Topic patterns: dot-separated words where ``*`` is exactly one word and ``#`` zero or more."""

import re
from functools import lru_cache

WORD = re.compile(r"[a-z0-9_-]+")
MAX_LENGTH = 128
MAX_WORDS = 10


def is_valid_event_type(value: str) -> bool:
    words = value.split(".")
    return 0 < len(value) <= MAX_LENGTH and len(words) <= MAX_WORDS and all(WORD.fullmatch(w) for w in words)


def is_valid_pattern(value: str) -> bool:
    words = value.split(".")
    return (
        0 < len(value) <= MAX_LENGTH
        and len(words) <= MAX_WORDS
        and all(w in ("*", "#") or WORD.fullmatch(w) for w in words)
    )


@lru_cache(maxsize=65536)
def matches(pattern: str, event_type: str) -> bool:
    return _match(tuple(pattern.split(".")), tuple(event_type.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return _match(rest, words) or (bool(words) and _match(pattern, words[1:]))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])
