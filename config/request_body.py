"""The request body between the WSGI server and Django (docs/api.md).

A body sent with ``Transfer-Encoding: chunked`` is read like one with ``Content-Length``: gunicorn de-chunks
it (``wsgi.input_terminated``), but Django reads only ``CONTENT_LENGTH`` bytes, none when it is absent, so
the body is read here (counted, at most ``DATA_UPLOAD_MAX_MEMORY_SIZE``) and handed on with its length.
A server that does not de-chunk (``manage.py runserver``) gets a 411 instead of a silently empty body.

After the answer is made and before it goes out, whatever the application left of the body is read and
dropped, up to ``DRAIN_LIMIT``: a server closing a connection with unread data resets it, and the client,
still sending, never read the 413 (or 401, 404...) meant for it.
"""

import io
import json
from collections.abc import Callable, Iterable
from http import HTTPStatus

from django.conf import settings

from webhooks import correlation

DRAIN_LIMIT = 16 * 1024 * 1024
READ_SIZE = 64 * 1024

Environ = dict
StartResponse = Callable
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class RequestBodyMiddleware:
    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and not environ.get("CONTENT_LENGTH"):
            refusal = read_chunked_body(environ)
            if refusal is not None:
                drain(environ["wsgi.input"])
                return error(environ, start_response, *refusal)
        result = self.app(environ, start_response)
        drain(environ["wsgi.input"])
        return result


def read_chunked_body(environ: Environ) -> tuple[HTTPStatus, str] | None:
    """Replace a de-chunked body by the same bytes with a length; or the status and reason to refuse it."""
    if not environ.get("wsgi.input_terminated"):
        return HTTPStatus.LENGTH_REQUIRED, "this server cannot read a chunked request body: send Content-Length"
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = read_up_to(environ["wsgi.input"], limit + 1)
    if len(body) > limit:
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body is larger than {limit} bytes"
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return None


def read_up_to(stream: io.RawIOBase, limit: int) -> bytes:
    parts, size = [], 0
    while size < limit:
        part = stream.read(min(READ_SIZE, limit - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def drain(stream: io.RawIOBase) -> None:
    remaining = DRAIN_LIMIT
    while remaining > 0:
        part = stream.read(min(READ_SIZE, remaining))
        if not part:
            return
        remaining -= len(part)


def error(environ: Environ, start_response: StartResponse, status: HTTPStatus, detail: str) -> list[bytes]:
    """A JSON error as the API words them, with the correlation id every response carries."""
    body = json.dumps({"detail": detail}).encode()
    offered = environ.get("HTTP_X_CORRELATION_ID", "")
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        (correlation.HEADER, offered if correlation.VALID.fullmatch(offered) else correlation.new_id()),
    ]
    start_response(f"{status.value} {status.phrase}", headers)
    return [body]
