"""Standard Webhooks v1 signatures (https://www.standardwebhooks.com/) and the X-Webhook-Signature."""

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def generate_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX), validate=True)


def is_valid_secret(secret: str) -> bool:
    if not secret.startswith(PREFIX):
        return False
    try:
        key = secret_key(secret)
    except ValueError:
        return False
    return 24 <= len(key) <= 64 and base64.b64encode(key).decode() == secret.removeprefix(PREFIX)


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def legacy_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret_key(secret), body, hashlib.sha256).hexdigest()


def verify(secrets_: list[str], msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """True when any v1 signature in ``header`` matches any of ``secrets_`` (constant-time compare)."""
    expected = [standard_signature(s, msg_id, timestamp, body) for s in secrets_]
    offered = header.split()
    return any(hmac.compare_digest(e, o) for e in expected for o in offered)
