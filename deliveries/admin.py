"""The operators' view of deliveries: find one, read every attempt, redeliver or cancel it."""

import json
from collections.abc import Callable, Iterable

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from deliveries import actions
from deliveries.admin_display import EMPTY, STYLESHEET, clipped, time_field
from deliveries.chart import STATUS_COLOURS
from deliveries.dashboard_view import add_dashboard
from deliveries.models import Attempt, Delivery, Status
from deliveries.sender import safe_url

RESPONSE_EXCERPT_CHARS = 1024
DeliveryAction = Callable[[HttpRequest, QuerySet[Delivery]], None]


def status_badge(status: str) -> SafeString:
    return format_html(
        '<span class="hr-status hr-status-{}" style="background: {}; color: #fff; padding: 1px 7px; '
        'border-radius: 9px; white-space: nowrap">{}</span>',
        status,
        STATUS_COLOURS.get(status, "#555"),
        status,
    )


def attempt_badge(attempt: Attempt) -> SafeString:
    return status_badge(Status.SUCCEEDED if attempt.success else Status.FAILED)


def json_block(value: object) -> SafeString:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="hr-json" style="margin: 0; white-space: pre-wrap">{}</pre>', text)


def endpoint_link(delivery: Delivery) -> SafeString:
    """The endpoint (scheme, host and path: a query may hold a token), cut to its column; the whole in the title."""
    url = reverse("admin:subscriptions_subscription_change", args=[quote(delivery.subscription_id)])
    endpoint = safe_url(delivery.subscription.url)
    return format_html(
        '<a class="hr-clip" href="{}" title="{} ({})">{}</a>', url, endpoint, delivery.subscription_id, endpoint
    )


# --- Workflows behind the actions and the change-page buttons ---


def redeliver_all(deliveries: Iterable[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
    """Requeue each delivery (same webhook-id); refuses those whose subscription is inactive or deleted."""
    done, refused = [], []
    for delivery in deliveries:
        subscription = delivery.subscription
        if not subscription.is_active or subscription.is_deleted:
            refused.append(delivery)
            continue
        actions.redeliver(delivery)
        done.append(delivery)
    return done, refused


def cancel_all(deliveries: Iterable[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
    """Cancel each pending delivery; the others are returned as not cancelled."""
    done, skipped = [], []
    for delivery in deliveries:
        (done if actions.cancel(delivery) else skipped).append(delivery)
    return done, skipped


def ids(deliveries: list[Delivery]) -> str:
    return ", ".join(d.id for d in deliveries[:10]) + (" …" if len(deliveries) > 10 else "")


class AttemptInline(admin.TabularInline):
    """Every attempt, newest first; history, so nothing here can be changed."""

    model = Attempt
    extra = 0
    can_delete = False
    ordering = ["-number"]
    fields = ["number", "started", "duration_ms", "status_code", "outcome", "error", "response_excerpt"]
    readonly_fields = fields
    started = time_field("started_at", "started")

    @admin.display(description="outcome")
    def outcome(self, attempt: Attempt) -> SafeString:
        return attempt_badge(attempt)

    @admin.display(description="response (excerpt)")
    def response_excerpt(self, attempt: Attempt) -> SafeString:
        body = attempt.response_body[:RESPONSE_EXCERPT_CHARS]
        return format_html(
            '<code class="hr-response" style="display: block; max-height: 7em; max-width: 40em; overflow: auto; '
            'white-space: pre-wrap">{}</code>',
            body,
        )

    def has_add_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    # What fits a 1366 px screen beside the filters; the ids, the tenant (a filter too) and the last error are
    # on each delivery's page, which the event type links to.
    list_display = [
        "status_label",
        "event_type_label",
        "endpoint",
        "attempts",
        "last_status",
        "next_attempt",
        "created",
    ]
    list_display_links = ["event_type_label"]
    list_filter = ["status", "event_type", "subscription__tenant", "created_at"]
    list_select_related = ["subscription"]
    search_fields = ["id", "event__id", "subscription__url"]
    search_help_text = "Delivery id, event id (the webhook-id) or part of the endpoint URL."
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["id", "status_label", "event_link", "event_type", "endpoint", "tenant"]}),
        (
            "Progress",
            {"fields": ["attempt_count", "next_attempt", "last_status_code", "last_error", "created", "completed"]},
        ),
        ("Payload (what the subscriber receives as the body)", {"fields": ["payload"]}),
    ]
    readonly_fields = [
        "status_label",
        "event_link",
        "endpoint",
        "tenant",
        "next_attempt",
        "created",
        "completed",
        "payload",
    ]
    inlines = [AttemptInline]
    actions = ["redeliver_now", "cancel"]
    next_attempt = time_field("next_attempt_at", "next attempt")
    created = time_field("created_at", "created")
    completed = time_field("completed_at", "completed")

    class Media:
        css = {"all": [STYLESHEET]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        return super().get_queryset(request).select_related("subscription", "subscription__tenant")

    @admin.display(description="status", ordering="status")
    def status_label(self, delivery: Delivery) -> SafeString:
        return status_badge(delivery.status)

    @admin.display(description="event type", ordering="event_type")
    def event_type_label(self, delivery: Delivery) -> SafeString:
        return clipped(delivery.event_type)

    @admin.display(description="endpoint", ordering="subscription__url")
    def endpoint(self, delivery: Delivery) -> SafeString:
        return endpoint_link(delivery)

    @admin.display(description="tenant", ordering="subscription__tenant__slug")
    def tenant(self, delivery: Delivery) -> str:
        return str(delivery.subscription.tenant or EMPTY)

    @admin.display(description="attempts", ordering="attempt_count")
    def attempts(self, delivery: Delivery) -> int:
        return delivery.attempt_count

    @admin.display(description="last status", ordering="last_status_code")
    def last_status(self, delivery: Delivery) -> int | None:
        return delivery.last_status_code

    @admin.display(description="event (webhook-id)")
    def event_link(self, delivery: Delivery) -> SafeString:
        url = reverse("admin:webhooks_event_change", args=[quote(delivery.event_id)])
        return format_html('<a href="{}">{}</a>', url, delivery.event_id)

    @admin.display(description="body")
    def payload(self, delivery: Delivery) -> SafeString:
        return json_block(delivery.event.payload())

    # History is read-only: a delivery changes only through the actions below.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        return False

    @admin.action(description="Redeliver now (same webhook-id, fresh retry schedule)", permissions=["change"])
    def redeliver_now(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        done, refused = redeliver_all(queryset.select_related("subscription"))
        text = ngettext(
            "Queued %(count)d delivery for redelivery now.",
            "Queued %(count)d deliveries for redelivery now.",
            len(done),
        )
        self._report(request, done, text % {"count": len(done)}, "Redelivered now")
        if refused:
            self.message_user(
                request, f"Not redelivered, subscription inactive or deleted: {ids(refused)}", messages.WARNING
            )

    @admin.action(description="Cancel (pending deliveries only)", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        done, skipped = cancel_all(queryset)
        text = ngettext("Cancelled %(count)d pending delivery.", "Cancelled %(count)d pending deliveries.", len(done))
        self._report(request, done, text % {"count": len(done)}, "Cancelled")
        if skipped:
            self.message_user(request, f"Not cancelled, not pending: {ids(skipped)}", messages.WARNING)

    def _report(self, request: HttpRequest, done: list[Delivery], text: str, log: str) -> None:
        for delivery in done:
            self.log_change(request, delivery, log)
        if done:
            self.message_user(request, text, messages.SUCCESS)

    # --- The same two actions as buttons on a delivery's page ---

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/redeliver/", view(self.redeliver_view), name="deliveries_delivery_redeliver"),
            path("<path:object_id>/cancel/", view(self.cancel_view), name="deliveries_delivery_cancel"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_operate": self.has_change_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def redeliver_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._object_action(request, object_id, self.redeliver_now)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._object_action(request, object_id, self.cancel)

    def _object_action(self, request: HttpRequest, object_id: str, action: DeliveryAction) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        pk = unquote(object_id)
        queryset = self.get_queryset(request).filter(pk=pk)
        if not queryset.exists():
            raise Http404("no such delivery")
        action(request, queryset)
        return HttpResponseRedirect(reverse("admin:deliveries_delivery_change", args=[quote(pk)]))


@admin.register(Attempt)
class AttemptAdmin(admin.ModelAdmin):
    list_display = ["attempt", "delivery_link", "started", "status_code", "outcome", "error_text", "duration_ms"]
    list_display_links = ["attempt"]
    list_filter = ["success", "started_at"]
    search_fields = ["delivery__id", "delivery__event__id"]
    show_full_result_count = False
    fields = ["delivery_link", "number", "started", "duration_ms", "status_code", "outcome", "error", "response_body"]
    readonly_fields = fields
    started = time_field("started_at", "started")

    class Media:
        css = {"all": [STYLESHEET]}

    @admin.display(description="outcome", ordering="success")
    def outcome(self, attempt: Attempt) -> SafeString:
        return attempt_badge(attempt)

    @admin.display(description="attempt", ordering="number")
    def attempt(self, attempt: Attempt) -> str:
        return f"#{attempt.number}"

    @admin.display(description="error", ordering="error")
    def error_text(self, attempt: Attempt) -> SafeString | str:
        return clipped(attempt.error) if attempt.error else EMPTY

    @admin.display(description="delivery", ordering="delivery_id")
    def delivery_link(self, attempt: Attempt) -> SafeString:
        url = reverse("admin:deliveries_delivery_change", args=[quote(attempt.delivery_id)])
        return format_html('<a href="{}">{}</a>', url, attempt.delivery_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Attempt | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Attempt | None = None) -> bool:
        return False


add_dashboard(admin.site)
admin.site.site_header = admin.site.site_title = "Hookrelay"
admin.site.index_title = "Hookrelay administration"
admin.site.empty_value_display = EMPTY
# The index and the breadcrumbs lead everywhere the sidebar does; without it a list has the width of a laptop.
admin.site.enable_nav_sidebar = False
