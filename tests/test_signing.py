"""Signatures a subscriber checks (CONTRACT.md section 4), against an implementation written here from the spec."""

import base64
import hashlib
import hmac
import os
from collections.abc import Callable

import pytest

from subscriptions.signing import (
    generate_secret,
    is_valid_secret,
    legacy_signature,
    secret_key,
    standard_signature,
    verify,
)

# The worked example published with the Standard Webhooks specification (and Svix's documentation).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_key(secret: str) -> bytes:
    assert secret.startswith("whsec_")
    return base64.b64decode(secret[len("whsec_") :])


def spec_v1_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks v1, written from the spec: HMAC-SHA256 over `{id}.{timestamp}.{body}`, base64."""
    signed_content = f"{msg_id}.{timestamp}.{body.decode()}".encode()
    mac = hmac.new(spec_key(secret), signed_content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def spec_legacy_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(spec_key(secret), body, hashlib.sha256).hexdigest()


def make_secret(size: int) -> str:
    return "whsec_" + base64.b64encode(os.urandom(size)).decode()


BODIES = [
    b"",
    b"{}",
    b'{"id":"evt_1","type":"order.created","timestamp":"2026-01-01T00:00:00Z","data":{"total":12}}',
    '{"name":"Zoë 東京 🚀"}'.encode(),
    b"x" * 100_000,
]


def test_the_independent_implementation_reproduces_the_published_example() -> None:
    assert spec_v1_signature(SPEC_SECRET, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_it_signs_the_published_example_as_the_spec_says() -> None:
    assert standard_signature(SPEC_SECRET, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("key_size", [24, 32, 64])
def test_its_standard_signature_agrees_with_the_spec(body: bytes, key_size: int) -> None:
    secret = make_secret(key_size)
    expected = spec_v1_signature(secret, "msg_2Lx8Qm3kz9", 1767225600, body)
    assert standard_signature(secret, "msg_2Lx8Qm3kz9", 1767225600, body) == expected


def test_the_signature_covers_the_id_the_timestamp_and_the_body() -> None:
    secret = make_secret(32)
    base = standard_signature(secret, "msg_1", 1700000000, b'{"a":1}')
    assert standard_signature(secret, "msg_2", 1700000000, b'{"a":1}') != base
    assert standard_signature(secret, "msg_1", 1700000001, b'{"a":1}') != base
    assert standard_signature(secret, "msg_1", 1700000000, b'{"a":2}') != base
    assert standard_signature(make_secret(32), "msg_1", 1700000000, b'{"a":1}') != base


def test_the_key_is_the_decoded_secret_not_its_text() -> None:
    secret = make_secret(32)
    as_text = hmac.new(secret.encode(), b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert standard_signature(secret, "msg_1", 1700000000, b"{}") != "v1," + base64.b64encode(as_text).decode()
    assert secret_key(secret) == spec_key(secret)


@pytest.mark.parametrize("body", BODIES)
def test_its_legacy_signature_is_the_hex_hmac_of_the_body_alone(body: bytes) -> None:
    secret = make_secret(32)
    assert legacy_signature(secret, body) == spec_legacy_signature(secret, body)
    assert legacy_signature(secret, body).startswith("sha256=")
    assert len(legacy_signature(secret, body)) == len("sha256=") + 64


def test_a_generated_secret_is_valid_and_holds_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert is_valid_secret(first)
    assert len(spec_key(first)) == 32
    assert first != second


@pytest.mark.parametrize("size", [24, 25, 32, 48, 63, 64])
def test_it_accepts_a_secret_of_24_to_64_bytes(size: int) -> None:
    assert is_valid_secret(make_secret(size))


def test_it_accepts_the_published_example_secret() -> None:
    assert is_valid_secret(SPEC_SECRET)


@pytest.mark.parametrize("size", [0, 1, 16, 23, 65, 128])
def test_it_rejects_a_secret_outside_24_to_64_bytes(size: int) -> None:
    assert not is_valid_secret(make_secret(size))


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        base64.b64encode(b"k" * 32).decode(),  # no prefix
        "WHSEC_" + base64.b64encode(b"k" * 32).decode(),
        "whsec" + base64.b64encode(b"k" * 32).decode(),
        "sk_" + base64.b64encode(b"k" * 32).decode(),
        "whsec_" + base64.b64encode(b"k" * 25).decode().rstrip("="),  # padding missing
        "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),  # URL-safe alphabet
        "whsec_" + base64.b64encode(b"k" * 32).decode() + " ",
        " whsec_" + base64.b64encode(b"k" * 32).decode(),
        "whsec_" + base64.b64encode(b"k" * 32).decode() + "\n",
        "whsec_" + base64.b64encode(b"k" * 30).decode()[:20] + "!" + base64.b64encode(b"k" * 30).decode()[21:],
        "whsec_" + "é" * 40,
        "whsec_whsec_" + base64.b64encode(b"k" * 32).decode(),
    ],
)
def test_it_rejects_a_malformed_secret(secret: str) -> None:
    assert not is_valid_secret(secret)


def test_it_rejects_a_secret_whose_base64_is_not_canonical() -> None:
    # RFC 4648 section 3.5: the unused bits of the last character must be zero; "Ag==" and "Ah==" decode alike.
    canonical = base64.b64encode(b"k" * 24 + b"\x02").decode()
    assert canonical.endswith("Ag==")
    assert is_valid_secret("whsec_" + canonical)
    assert not is_valid_secret("whsec_" + canonical[:-3] + "h==")


def test_verify_accepts_the_published_example() -> None:
    assert verify([SPEC_SECRET], SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, SPEC_SIGNATURE)


def test_verify_accepts_a_signature_made_by_the_independent_implementation() -> None:
    secret = make_secret(32)
    header = spec_v1_signature(secret, "msg_1", 1700000000, b'{"a":1}')
    assert verify([secret], "msg_1", 1700000000, b'{"a":1}', header)


def test_verify_rejects_a_changed_body_id_or_timestamp() -> None:
    secret = make_secret(32)
    header = spec_v1_signature(secret, "msg_1", 1700000000, b'{"a":1}')
    assert not verify([secret], "msg_1", 1700000000, b'{"a":2}', header)
    assert not verify([secret], "msg_2", 1700000000, b'{"a":1}', header)
    assert not verify([secret], "msg_1", 1700000001, b'{"a":1}', header)


def test_verify_rejects_a_signature_made_with_another_secret() -> None:
    header = spec_v1_signature(make_secret(32), "msg_1", 1700000000, b"{}")
    assert not verify([make_secret(32)], "msg_1", 1700000000, b"{}", header)


def test_verify_accepts_either_of_two_secrets_during_a_rotation() -> None:
    new, old = make_secret(32), make_secret(32)
    signed_with_old = spec_v1_signature(old, "msg_1", 1700000000, b"{}")
    signed_with_new = spec_v1_signature(new, "msg_1", 1700000000, b"{}")
    assert verify([new, old], "msg_1", 1700000000, b"{}", signed_with_old)
    assert verify([new, old], "msg_1", 1700000000, b"{}", signed_with_new)
    assert not verify([new], "msg_1", 1700000000, b"{}", signed_with_old)


def test_verify_accepts_a_header_with_space_separated_signatures_when_any_matches() -> None:
    secret = make_secret(32)
    good = spec_v1_signature(secret, "msg_1", 1700000000, b"{}")
    stranger = spec_v1_signature(make_secret(32), "msg_1", 1700000000, b"{}")
    assert verify([secret], "msg_1", 1700000000, b"{}", f"{stranger} {good}")
    assert verify([secret], "msg_1", 1700000000, b"{}", f"{good} {stranger}")
    assert not verify([secret], "msg_1", 1700000000, b"{}", f"{stranger} {stranger}")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda sig: "",
        lambda sig: sig.removeprefix("v1,"),
        lambda sig: "v2," + sig.removeprefix("v1,"),
        lambda sig: "v1a," + sig.removeprefix("v1,"),
        lambda sig: sig[:-2] + ("A=" if sig[-2] != "A" else "B="),
        lambda sig: sig[:20],
    ],
)
def test_verify_rejects_a_signature_that_is_not_exactly_v1(mangle: Callable[[str], str]) -> None:
    secret = make_secret(32)
    sig = spec_v1_signature(secret, "msg_1", 1700000000, b"{}")
    assert not verify([secret], "msg_1", 1700000000, b"{}", mangle(sig))


def test_verify_with_no_secrets_accepts_nothing() -> None:
    assert not verify([], SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, SPEC_SIGNATURE)


def test_the_legacy_signature_does_not_pass_as_a_v1_signature() -> None:
    secret = make_secret(32)
    assert not verify([secret], "msg_1", 1700000000, b"{}", legacy_signature(secret, b"{}"))
