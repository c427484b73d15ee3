"""Validation of what subscribers send (docs/api.md); each failure names what is wrong."""

from urllib.parse import urlsplit

from django.conf import settings
from rest_framework.exceptions import ValidationError

from subscriptions import signing, topics
from subscriptions.addresses import host_is_public

MAX_URL_LENGTH = 2048
MAX_PATTERNS = 100


def validate_url(value: str) -> str:
    if len(value) > MAX_URL_LENGTH:
        raise ValidationError(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValidationError("must be a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("must be an absolute http or https URL")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("must not contain credentials")
    if any(char.isspace() for char in value):
        raise ValidationError("must not contain whitespace")
    if not settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS and not host_is_public(parts.hostname):
        raise ValidationError("must not point to a private, loopback or otherwise non-public address")
    return value


def validate_patterns(value: list[str]) -> list[str]:
    if not 1 <= len(value) <= MAX_PATTERNS:
        raise ValidationError(f"must list 1 to {MAX_PATTERNS} event type patterns")
    bad = [pattern for pattern in value if not topics.is_valid_pattern(pattern)]
    if bad:
        raise ValidationError(
            f"invalid pattern {bad[0]!r}: use 1 to 10 dot-separated words of [a-z0-9_-], "
            "'*' for one word or '#' for any number, at most 128 characters"
        )
    return list(dict.fromkeys(value))


def validate_secret(value: str) -> str:
    if not signing.is_valid_secret(value):
        raise ValidationError("must be 'whsec_' followed by standard base64 (with padding) of 24 to 64 bytes")
    return value


def validate_event_type(value: str) -> str:
    if not topics.is_valid_event_type(value):
        raise ValidationError(
            "must be 1 to 10 dot-separated words of [a-z0-9_-] (no wildcards), at most 128 characters"
        )
    if value.startswith("webhook."):
        raise ValidationError("the 'webhook.' prefix is reserved")
    return value
