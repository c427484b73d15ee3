"""API plumbing shared by every app: pagination, and errors that are always JSON (docs/api.md)."""

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class Pagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        return min(positive_int(raw, self.page_size_query_param), self.max_page_size)

    def paginate_queryset(self, queryset, request: Request, view=None):
        raw = request.query_params.get(self.page_query_param)
        if raw is not None and raw != "last":
            positive_int(raw, self.page_query_param)
        return super().paginate_queryset(queryset, request, view)


def positive_int(raw: str, name: str) -> int:
    # isascii: str.isdigit() also accepts digits int() refuses, such as "²".
    if raw.isascii() and raw.isdigit() and int(raw) > 0:
        return int(raw)
    raise exceptions.ValidationError({name: ["must be a positive integer"]})


def exception_handler(exc: Exception, context: dict) -> Response | None:
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, list):
        response.data = {"detail": " ".join(str(item) for item in response.data)}
    return response


def json_error(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)


def wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/oauth/")) or "json" in request.headers.get("Accept", "")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_json(request):
        return json_error(404, "Not found.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if wants_json(request):
        return json_error(500, "Internal server error.")
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_json(request) and isinstance(exception, RequestDataTooBig):
        return json_error(413, f"the request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes")
    if wants_json(request):
        return json_error(400, "Bad request.")
    from django.views.defaults import bad_request as html_bad_request

    return html_bad_request(request, exception)
