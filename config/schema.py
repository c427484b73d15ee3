"""The OpenAPI schema's cross-cutting parts: every error an operation can answer, and the headers every answer carries.

Views declare what is theirs (their success responses, a ``409``, a ``422``); this schema class adds the
answers the API's common machinery gives to any operation it applies to (docs/api.md): a
validation ``400`` where there is input, ``401``, ``403`` where a scope is needed, ``404`` for an unknown id
or a page past the end, ``406``, ``413`` and ``415`` where there is a body, and ``429``.
"""

from drf_spectacular import openapi
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

from subscriptions.schema import required_scope


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What went wrong.")


# DRF's per-field messages: a list per field, or per item index for a list's items; ``detail`` for the body.
VALIDATION_ERROR = {
    "type": "object",
    "description": 'Messages per field (`{"url": ["..."]}`, by index for list items), or `{"detail": "..."}` '
    "when the request as a whole is malformed (unparsable JSON, a bad filter or page value).",
    "additionalProperties": {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        ]
    },
    "example": {"url": ["must be an absolute http or https URL"]},
}
ERRORS = {
    "400": ("ValidationError", "The input is not valid."),
    "401": ("Unauthorized", "The bearer token is missing, invalid or expired."),
    "403": ("Forbidden", "The token lacks the scope this operation needs, or names another tenant."),
    "404": ("NotFound", "No such object for this client, or a page past the end."),
    "406": ("NotAcceptable", "The Accept header asks for neither JSON nor a supported API version."),
    "413": ("PayloadTooLarge", "The request body is over the size limit."),
    "415": ("UnsupportedMediaType", "The request body is not JSON."),
    "429": ("TooManyRequests", "Over the rate limit: try again after Retry-After seconds."),
}
HEADERS = {
    "X-RateLimit-Limit": {"schema": {"type": "integer", "minimum": 1}, "description": "Requests per window."},
    "X-RateLimit-Remaining": {"schema": {"type": "integer", "minimum": 0}, "description": "Left in this window."},
    "X-RateLimit-Reset": {"schema": {"type": "integer"}, "description": "When this window ends, in unix seconds."},
    "X-Correlation-Id": {
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        "description": "The request's own if it was 1 to 128 of [A-Za-z0-9._:-], else a new one.",
    },
}
RETRY_AFTER = {
    "schema": {"type": "integer", "minimum": 1},
    "required": True,
    "description": "Whole seconds until the rate-limit window ends.",
}
PAGE_SIZE = "Results per page: 20 by default; a larger size than 100 gives 100."
LOCATION = {"schema": {"type": "string"}, "required": True, "description": "The new object's URL."}


class AutoSchema(openapi.AutoSchema):
    def get_operation(self, path: str, path_regex: str, path_prefix: str, method: str, registry) -> dict | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        self.constrain_pagination(operation.get("parameters", []))
        responses = operation["responses"]
        for status, response in responses.items():
            self.complete_response(status, response)
        for status in self.error_statuses(operation):
            responses.setdefault(status, self.error_response(status))
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def constrain_pagination(self, parameters: list[dict]) -> None:
        """``config.api.Pagination`` refuses a page or page size that is not a positive integer with a 400."""
        paginator = getattr(self.view, "paginator", None)
        page, size = getattr(paginator, "page_query_param", None), getattr(paginator, "page_size_query_param", None)
        for parameter in parameters:
            if parameter["in"] == "query" and parameter["name"] in (page, size):
                parameter["schema"] = {**parameter["schema"], "minimum": 1}
            if parameter["in"] == "query" and parameter["name"] == size:
                parameter["description"] = PAGE_SIZE

    def error_statuses(self, operation: dict) -> list[str]:
        has_body = "requestBody" in operation
        has_input = has_body or any(p["in"] != "path" for p in operation.get("parameters", []))
        statuses = ["401", "406", "429"]
        statuses += ["400"] if has_input else []
        statuses += ["403"] if required_scope(self.view, self.method) else []
        statuses += ["404"] if "{" in self.path or getattr(self.view, "action", None) == "list" else []
        statuses += ["413", "415"] if has_body else []
        return statuses

    def complete_response(self, status: str, response: dict) -> None:
        """The headers every answer carries, and a JSON error body for an error declared without one."""
        headers = response.setdefault("headers", {})
        for name in HEADERS:
            headers.setdefault(name, self.header_ref(name))
        if status == "201":
            headers.setdefault("Location", LOCATION)
        if status >= "400" and "content" not in response:
            response["content"] = self.error_content(status)

    def error_response(self, status: str) -> dict:
        """A shared ``components/responses`` entry for one of the common errors."""
        name, description = ERRORS[status]
        headers = {header: self.header_ref(header) for header in HEADERS}
        if status == "429":
            headers["Retry-After"] = RETRY_AFTER
        response = {"description": description, "headers": headers, "content": self.error_content(status)}
        return self.component(ResolvedComponent.RESPONSE, name, response)

    def error_content(self, status: str) -> dict:
        if status == "400":
            schema = self.component(ResolvedComponent.SCHEMA, "ValidationError", VALIDATION_ERROR)
        else:
            schema = self.resolve_serializer(ErrorSerializer, "response").ref
        return {media_type: {"schema": schema} for media_type in JSON_TYPES}

    def header_ref(self, name: str) -> dict:
        return self.component(ResolvedComponent.HEADER, name, HEADERS[name])

    def component(self, kind: str, name: str, schema: dict) -> dict:
        component = ResolvedComponent(name=name, type=kind, schema=schema, object=f"{kind}:{name}")
        self.registry.register_on_missing(component)
        return component.ref

    def get_description(self) -> str:
        """The action's own docstring only: a view's class docstring is written for its maintainers."""
        action = getattr(self.view, getattr(self.view, "action", None) or self.method.lower(), None)
        return (getattr(action, "__doc__", None) or "").strip()


JSON_TYPES = ["application/json", "application/vnd.hookrelay+json"]
