"""An independent Standard Webhooks v1 verifier, written from the spec, not from our signing code.

Spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
"""

import base64
import hashlib
import hmac


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signature_is_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    headers = {name.lower(): value for name, value in headers.items()}
    wanted = expected_signature(secret, headers["webhook-id"], headers["webhook-timestamp"], body)
    return any(hmac.compare_digest(wanted, offered) for offered in headers["webhook-signature"].split(" "))
