"""NUL characters in a request's path, query string, headers or form fields are answered here, before any
view or query.

PostgreSQL refuses NUL in text, so each one used to reach a lookup as a 500. No path of ours can contain
one (an id that cannot exist is 404), no query parameter or header may (RFC 9110 section 5.5 lets a server
reject a field value with NUL), and a bad parameter or header is a 400 naming it, as a filter's own
validation does.
Form bodies are the browser pages' (the admin's actions take ids from them); the API reads JSON only, and
the token endpoint answers a client id with NUL itself, as RFC 6749 wants (``config.oauth``).
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from config.api import bad_request, not_found, wants_json

NUL = "\x00"
NUL_MESSAGE = "Null characters are not allowed."  # as Django's form fields word it
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class MalformedInputMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if NUL in request.path:
            return not_found(request)
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or NUL in query:
            return refuse(request, query_error(request))
        header = header_with_nul(request.META)
        if header is not None:
            return refuse(request, {header: [NUL_MESSAGE]})
        if has_form_body(request) and any(NUL in key + "".join(values) for key, values in request.POST.lists()):
            return refuse(request, {"detail": f"form body: {NUL_MESSAGE}"})
        return self.get_response(request)


def query_error(request: HttpRequest) -> dict[str, list[str] | str]:
    """``{"name": [message]}`` for the first parameter whose value holds NUL; a NUL in a name gets ``detail``."""
    for name, values in request.GET.lists():
        if NUL in name:
            break
        if any(NUL in value for value in values):
            return {name: [NUL_MESSAGE]}
    return {"detail": f"query string: {NUL_MESSAGE}"}


def has_form_body(request: HttpRequest) -> bool:
    return (
        request.method == "POST"
        and request.content_type in FORM_TYPES
        and not request.path_info.startswith(("/api/", "/oauth/"))
    )


def header_with_nul(meta: dict) -> str | None:
    for key, value in meta.items():
        if (key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")) and NUL in value:
            return key.removeprefix("HTTP_").replace("_", "-").title()
    return None


def refuse(request: HttpRequest, error: dict) -> HttpResponse:
    return JsonResponse(error, status=400) if wants_json(request) else bad_request(request)
