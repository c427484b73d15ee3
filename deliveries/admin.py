"""The operators' view of deliveries: find one, read every attempt, redeliver or cancel it."""

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil

from deliveries import actions
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


def relative_time(when: datetime | None, now: datetime | None = None) -> str:
    """``in 4 minutes``, ``due now``, ``2 minutes ago`` (a due or overdue row)."""
    if when is None:
        return "—"
    now = now or timezone.now()
    if abs((when - now).total_seconds()) < 60:
        return "due now"
    return f"in {timeuntil(when, now)}" if when > now else f"{timesince(when, now)} ago"


def json_block(value: object) -> SafeString:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="hr-json" style="margin: 0; white-space: pre-wrap">{}</pre>', text)


def endpoint_link(delivery: Delivery) -> SafeString:
    url = reverse("admin:subscriptions_subscription_change", args=[quote(delivery.subscription_id)])
    return format_html(
        '<a href="{}" title="{}">{}</a>', url, delivery.subscription_id, safe_url(delivery.subscription.url)
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

    @admin.display(description="started (UTC)")
    def started(self, attempt: Attempt) -> str:
        return f"{attempt.started_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"

    @admin.display(description="outcome")
    def outcome(self, attempt: Attempt) -> SafeString:
        return status_badge(Status.SUCCEEDED if attempt.success else Status.FAILED)

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
    list_display = [
        "id",
        "status_label",
        "event_type",
        "endpoint",
        "tenant",
        "attempt_count",
        "last_status_code",
        "next_attempt",
        "created_at",
    ]
    list_filter = ["status", "event_type", "subscription__tenant", "created_at"]
    list_select_related = ["subscription", "subscription__tenant"]
    search_fields = ["id", "event__id", "subscription__url"]
    search_help_text = "Delivery id, event id (the webhook-id) or part of the endpoint URL."
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["id", "status_label", "event_link", "event_type", "endpoint", "tenant"]}),
        (
            "Progress",
            {
                "fields": [
                    "attempt_count",
                    "next_attempt",
                    "last_status_code",
                    "last_error",
                    "created_at",
                    "completed_at",
                ]
            },
        ),
        ("Payload (what the subscriber receives as the body)", {"fields": ["payload"]}),
    ]
    readonly_fields = ["status_label", "event_link", "endpoint", "tenant", "next_attempt", "payload"]
    inlines = [AttemptInline]
    actions = ["redeliver_now", "cancel"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        return super().get_queryset(request).select_related("subscription", "subscription__tenant")

    @admin.display(description="status", ordering="status")
    def status_label(self, delivery: Delivery) -> SafeString:
        return status_badge(delivery.status)

    @admin.display(description="endpoint", ordering="subscription__url")
    def endpoint(self, delivery: Delivery) -> SafeString:
        return endpoint_link(delivery)

    @admin.display(description="tenant", ordering="subscription__tenant__slug")
    def tenant(self, delivery: Delivery) -> str:
        return str(delivery.subscription.tenant or "—")

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, delivery: Delivery) -> str:
        return relative_time(delivery.next_attempt_at)

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
        self._report(request, done, f"Queued {len(done)} deliveries for redelivery now.", "Redelivered now")
        if refused:
            self.message_user(
                request, f"Not redelivered, subscription inactive or deleted: {ids(refused)}", messages.WARNING
            )

    @admin.action(description="Cancel (pending deliveries only)", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        done, skipped = cancel_all(queryset)
        self._report(request, done, f"Cancelled {len(done)} pending deliveries.", "Cancelled")
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
    list_display = ["delivery", "number", "started_at", "status_code", "success", "error", "duration_ms"]
    list_filter = ["success", "started_at"]
    list_select_related = ["delivery"]
    search_fields = ["delivery__id", "delivery__event__id"]
    show_full_result_count = False
    readonly_fields = [field.name for field in Attempt._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Attempt | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Attempt | None = None) -> bool:
        return False


add_dashboard(admin.site)
