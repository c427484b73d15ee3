"""Events in the admin: history, read-only, with their deliveries counted by status and listed inline."""

from django.contrib import admin
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from deliveries.admin import json_block, status_badge
from deliveries.admin_display import EMPTY, STYLESHEET, clipped, time_field
from deliveries.models import Delivery, Status
from deliveries.sender import safe_url
from webhooks.models import Event


def deliveries_with(status: str) -> Coalesce:
    """How many of the event's deliveries have ``status``: a correlated subquery, indexed by event."""
    count = (
        Delivery.objects.filter(event=OuterRef("pk"), status=status)
        .order_by()
        .values("event")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(count, output_field=IntegerField()), Value(0))


class DeliveryInline(admin.TabularInline):
    model = Delivery
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["created_at", "id"]
    fields = ["id", "status_label", "endpoint", "attempt_count", "last_status_code", "next_attempt", "completed"]
    readonly_fields = fields
    next_attempt = time_field("next_attempt_at", "next attempt")
    completed = time_field("completed_at", "completed")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        return super().get_queryset(request).select_related("subscription")

    @admin.display(description="status")
    def status_label(self, delivery: Delivery) -> SafeString:
        return status_badge(delivery.status)

    @admin.display(description="endpoint")
    def endpoint(self, delivery: Delivery) -> str:
        return safe_url(delivery.subscription.url)

    def has_add_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "event_type", "tenant_slug", "created", "deliveries_by_status"]
    list_filter = ["type", "tenant", "created_at"]
    list_select_related = ["tenant"]
    search_fields = ["id", "idempotency_key", "correlation_id"]
    search_help_text = "Event id (the webhook-id), idempotency key or correlation id."
    show_full_result_count = False
    fields = ["id", "type", "tenant", "created", "idempotency_key", "correlation_id", "deliveries", "payload"]
    readonly_fields = fields
    inlines = [DeliveryInline]
    created = time_field("created_at", "created")

    class Media:
        css = {"all": [STYLESHEET]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        counts = {f"n_{status}": deliveries_with(status) for status in Status.values}
        return super().get_queryset(request).select_related("tenant").annotate(**counts)

    @admin.display(description="type", ordering="type")
    def event_type(self, event: Event) -> SafeString:
        return clipped(event.type)

    @admin.display(description="tenant", ordering="tenant__slug")
    def tenant_slug(self, event: Event) -> SafeString | str:
        return clipped(event.tenant.slug) if event.tenant else EMPTY

    @admin.display(description="deliveries")
    def deliveries_by_status(self, event: Event) -> SafeString:
        counts = [(getattr(event, f"n_{s}"), s) for s in Status.values if getattr(event, f"n_{s}")]
        if not counts:
            return format_html("{}", "none")
        return format_html_join(" ", "{}&nbsp;{}", ((n, status_badge(s)) for n, s in counts))

    @admin.display(description="deliveries")
    def deliveries(self, event: Event) -> SafeString:
        url = reverse("admin:deliveries_delivery_changelist") + "?" + urlencode({"event__id__exact": event.pk})
        return format_html('{} <a href="{}">(list)</a>', self.deliveries_by_status(event), url)

    @admin.display(description="payload (the body subscribers receive)")
    def payload(self, event: Event) -> SafeString:
        return json_block(event.payload())

    # History: events are published through the API or publish(), never typed in or edited here.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False
