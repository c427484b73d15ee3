"""The API's JSON parser: DRF's, with a limit on nesting checked before parsing (docs/api.md)."""

import io
import json
import re

from rest_framework import exceptions, parsers

# Deeper bodies are refused before parsing: json, the serializers and the checks after them recurse once
# per level, and Python's recursion limit turned a body a few hundred levels deep into a 500.
MAX_JSON_DEPTH = 64
# A string token runs to its closing quote or, unterminated, to the end of the body: requiring the closing
# quote made an unterminated string of escaped quotes cost quadratic time (a match tried from every quote).
JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)|[\[\]{}:]', re.DOTALL)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type: str | None = None, parser_context: dict | None = None) -> object:
        raw = stream.read()
        error = nesting_error(raw)
        if error is not None:
            raise exceptions.ValidationError(error)
        return super().parse(io.BytesIO(raw), media_type, parser_context)


def nesting_error(raw: bytes) -> dict | None:
    """The 400 body for JSON nested deeper than ``MAX_JSON_DEPTH``, naming the top-level field that is; else None.

    Counting brackets costs next to nothing; only a body with more of them than the limit is scanned.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return None
    depth, field, last_string = 0, None, b""
    for token in JSON_TOKENS.findall(raw):
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return too_deep(field)
        elif token in (b"]", b"}"):
            depth -= 1
        elif token == b":":
            field = last_string if depth == 1 else field
        else:
            last_string = token
    return None


def too_deep(field: bytes | None) -> dict:
    message = f"nested too deeply: a JSON body may nest at most {MAX_JSON_DEPTH} levels"
    try:
        return {json.loads(field): [message]} if field else {"detail": message}
    except ValueError:
        return {"detail": message}
