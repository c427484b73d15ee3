"""OpenAPI: the OAuth2 client-credentials scheme with each operation's scope, and the rules the validators enforce.

The patterns below state in JSON Schema (ECMA 262 regular expressions) what ``subscriptions.validation``,
``subscriptions.topics`` and ``subscriptions.signing`` check in Python; ``tests/test_schema_conformance.py``
holds them to each other.
"""

from django.conf import settings
from django.urls import reverse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from subscriptions import signing, topics, validation


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "subscriptions.tenancy.TokenAuthentication"
    name = "oauth2"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict:
        return {
            "type": "oauth2",
            "description": "Client credentials grant (RFC 6749 section 4.4): the client id and secret in HTTP "
            "Basic auth or in the form body. Send the token as `Authorization: Bearer <token>`.",
            "flows": {"clientCredentials": {"tokenUrl": reverse("oauth-token"), "scopes": dict(settings.API_SCOPES)}},
        }

    def get_security_requirement(self, auto_schema: AutoSchema) -> dict:
        scope = required_scope(auto_schema.view, auto_schema.method)
        return {self.name: [scope] if scope else []}


def required_scope(view: object, method: str) -> str | None:
    """The scope ``HasScope`` asks of this operation: ``required_scopes`` by action, else by method."""
    scopes = getattr(view, "required_scopes", None) or {}
    return scopes.get(getattr(view, "action", None) or method.lower())


# Python's str.isspace() characters, spelled out: ECMA's \s is another set.
SPACE = r"\t\n\u000b\f\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
PORT = r"0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# An absolute http(s) URL with a host, no credentials, a port (if any) in range, and neither whitespace nor
# NUL inside.
URL_PATTERN = (
    rf"^[{SPACE}]*[Hh][Tt][Tt][Pp][Ss]?://[^\u0000{SPACE}/?#@\[\]:]+(?::(?:{PORT})?)?"
    rf"(?:[/?#][^\u0000{SPACE}]*)?[{SPACE}]*$"
)
# An IRI, not only a URI: a host name may be international (it is sent as IDNA).
URL = {
    "type": "string",
    "format": "iri",
    "maxLength": validation.MAX_URL_LENGTH,
    "pattern": URL_PATTERN,
    "description": "An absolute http or https URL without credentials. Unless the server allows private "
    "networks, a literal IP address, or a name that resolves, must be a public address (checked again at "
    "every send). Whitespace around it is trimmed.",
    "example": "https://hooks.example.com/orders",
}


def trimmed(pattern: str) -> str:
    """``pattern`` as a whole string, with the whitespace DRF's CharField trims around it."""
    return rf"^[{SPACE}]*(?:{pattern})[{SPACE}]*$"


TRIMMED = "Whitespace around it is trimmed."
WORD = r"[a-z0-9_-]+"
PATTERN_WORD = rf"(?:{WORD}|\*|#)"
MAX_WORDS = topics.MAX_WORDS - 1
EVENT_PATTERN = {
    "type": "string",
    "minLength": 1,
    "maxLength": topics.MAX_LENGTH,
    "pattern": trimmed(rf"{PATTERN_WORD}(?:\.{PATTERN_WORD}){{0,{MAX_WORDS}}}"),
    "description": f"1 to 10 dot-separated words of [a-z0-9_-]; `*` stands for one word, `#` for any number. {TRIMMED}",
}
EVENT_PATTERNS = {
    "type": "array",
    "items": EVENT_PATTERN,
    "minItems": 1,
    "maxItems": validation.MAX_PATTERNS,
    "description": "Event type patterns this subscription receives (duplicates are dropped).",
    "example": ["order.*", "invoice.paid"],
}
EVENT_TYPE = {
    "type": "string",
    "minLength": 1,
    "maxLength": topics.MAX_LENGTH,
    "pattern": trimmed(rf"{WORD}(?:\.{WORD}){{0,{MAX_WORDS}}}"),
    "not": {"pattern": rf"^[{SPACE}]*webhook\."},
    "description": f"1 to 10 dot-separated words of [a-z0-9_-], no wildcards; `webhook.` is reserved. {TRIMMED}",
    "example": "order.created",
}

# A list filter's value: an event type, or nothing (no filter); Django's form fields trim it first.
EVENT_TYPE_FILTER = {
    "type": "string",
    "maxLength": topics.MAX_LENGTH,
    "pattern": rf"^[{SPACE}]*(?:{WORD}(?:\.{WORD}){{0,{MAX_WORDS}}})?[{SPACE}]*$",
}
NO_NUL = {"type": "string", "not": {"pattern": "\\u0000"}}

BASE64 = "[A-Za-z0-9+/]"
# 24 to 64 bytes in canonical standard base64: the padded tail's unused bits are zero.
SECRET_PATTERN = trimmed(
    rf"{signing.PREFIX}(?:(?:{BASE64}{{4}}){{8,21}}(?:{BASE64}[AQgw]==)?"
    rf"|(?:{BASE64}{{4}}){{8,20}}{BASE64}{{2}}[AEIMQUYcgkosw048]=)"
)
SECRET = {
    "type": "string",
    "pattern": SECRET_PATTERN,
    "description": f"`whsec_` and the standard base64 (with padding) of 24 to 64 bytes. {TRIMMED}",
    "example": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}
# "Contains no NUL" as a ``not``: a top-level pattern on a field that may be blank is turned into a oneOf.
DESCRIPTION = {"type": "string", "maxLength": 500, "not": {"pattern": "\\u0000"}, "description": "Free text."}
TENANT_SLUG = {
    "type": "string",
    "maxLength": 50,
    "pattern": trimmed("[-a-zA-Z0-9_]+"),
    "description": "A tenant's slug. A tenant client may name only its own tenant (another is 403); a platform "
    "client any existing one (an unknown slug is 400). Absent or null: the client's own tenant.",
}
# Creating a subscription takes the slug as sent (untrimmed); the schema generator adds the empty one
# (the client's own tenant) as a oneOf branch.
TENANT_SLUG_OR_BLANK = {**TENANT_SLUG, "pattern": "^[-a-zA-Z0-9_]+$"}
IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\u0020-\\u007e]+$"}
