"""Tenants, subscriptions and API clients in the admin (the HTTP layer: it may call any app's workflows)."""

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.translation import ngettext
from rest_framework.exceptions import ValidationError as DRFValidationError

from deliveries import actions
from deliveries.admin_display import EMPTY, STYLESHEET, absolute_time, clipped, time_field
from deliveries.sender import Result, safe_url
from subscriptions import validation
from subscriptions.clients import create_api_client
from subscriptions.models import ApiClient, Subscription, Tenant
from webhooks.ping import ping

MAX_PINGS = 10
PING_EXCERPT_CHARS = 200
RECOVER_DEFAULT_WINDOW = timedelta(hours=24)
RECOVER_HELP = (
    "Every failed delivery of these subscriptions created since this time becomes pending, due now, with a fresh "
    "retry schedule, to the subscription's current URL. Only active subscriptions are recovered."
)
INTERMEDIATE_TITLES = {
    "recover_failed": "Recover failed deliveries",
    "delete_keeping_history": "Delete subscriptions, keeping their delivery history",
}
DELETE_HELP = (
    "The subscriptions stop receiving events and disappear from the API; their pending deliveries are cancelled. "
    "Their delivery history stays in the admin and in the API's delivery list."
)


class SubscriptionStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "active"), ("disabled", "disabled"), ("deleted", "deleted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> QuerySet[Subscription]:
        state = self.value()
        if state == "deleted":
            return queryset.filter(deleted_at__isnull=False)
        if state in ("active", "disabled"):
            return queryset.filter(deleted_at__isnull=True, is_active=state == "active")
        return queryset


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "live_subscriptions", "created"]
    search_fields = ["slug", "name", "id"]
    readonly_fields = ["id", "created"]
    created = time_field("created_at", "created")

    class Media:
        css = {"all": [STYLESHEET]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        live = Count("subscriptions", filter=Q(subscriptions__deleted_at__isnull=True))
        return super().get_queryset(request).annotate(live_subscriptions=live)

    @admin.display(description="subscriptions", ordering="live_subscriptions")
    def live_subscriptions(self, tenant: Tenant) -> int:
        return tenant.live_subscriptions


def _checked(validator: Callable[[Any], Any], value: Any) -> Any:
    """Run an API validator, so the admin accepts exactly what the API accepts (docs/api.md)."""
    try:
        return validator(value)
    except DRFValidationError as exc:
        raise forms.ValidationError([str(message) for message in exc.detail]) from None


class SubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=validation.MAX_URL_LENGTH, assume_scheme="https")

    class Meta:
        model = Subscription
        fields = ["url", "events", "description", "tenant"]

    def clean_url(self) -> str:
        return _checked(validation.validate_url, self.cleaned_data["url"])

    def clean_events(self) -> list[str]:
        events = self.cleaned_data["events"]
        if not isinstance(events, list) or not all(isinstance(pattern, str) for pattern in events):
            raise forms.ValidationError('must be a JSON list of patterns, e.g. ["order.*", "invoice.#"]')
        return _checked(validation.validate_patterns, events)


class RecoverForm(forms.Form):
    since = forms.DateTimeField(
        label="Failed deliveries created since (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )


def state_badge(subscription: Subscription) -> SafeString:
    if subscription.is_deleted:
        return format_html('<span style="color: {}">{}</span>', "#8a8a8a", "deleted")
    if subscription.is_active:
        return format_html('<span style="color: {}">{}</span>', "#2e7d32", "active")
    return format_html(
        '<span style="color: {}">{}</span>: {}', "#c62828", "disabled", clipped(subscription.disabled_reason or "")
    )


def counted(singular: str, plural: str, count: int) -> str:
    """``1 subscription``, ``2 subscriptions``: ``singular`` and ``plural`` hold ``%(count)d``."""
    return ngettext(singular, plural, count) % {"count": count}


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    """Endpoints; every state change goes through deliveries.actions, webhooks.ping or Subscription.rotate_secret."""

    form = SubscriptionForm
    # What fits a 1366 px screen beside the filters; the id, the times and the whole disabled reason are on each
    # subscription's page, which the URL links to.
    list_display = ["endpoint", "tenant_slug", "patterns", "state", "failures", "last_success"]
    list_filter = [SubscriptionStateFilter, "tenant", "created_at", "last_success_at"]
    list_select_related = ["tenant"]
    search_fields = ["id", "url", "tenant__slug"]
    search_help_text = "Subscription id, part of the URL or the tenant's slug."
    readonly_fields = [
        "id",
        "state",
        "consecutive_failures",
        "last_success",
        "previous_secret_expires",
        "deliveries",
        "created",
        "updated",
        "deleted",
    ]
    actions = ["send_ping", "disable", "enable", "rotate_secret", "recover_failed", "delete_keeping_history"]
    last_success = time_field("last_success_at", "last success")
    previous_secret_expires = time_field("previous_secret_expires_at", "previous secret signs until")
    created = time_field("created_at", "created")
    updated = time_field("updated_at", "updated")
    deleted = time_field("deleted_at", "deleted")

    class Media:
        css = {"all": [STYLESHEET]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Subscription]:
        return super().get_queryset(request).select_related("tenant")

    def get_readonly_fields(self, request: HttpRequest, obj: Subscription | None = None) -> list[str]:
        return [*self.readonly_fields, "tenant"] if obj else self.readonly_fields

    @admin.display(description="URL", ordering="url")
    def endpoint(self, subscription: Subscription) -> SafeString:
        return clipped(safe_url(subscription.url))

    @admin.display(description="tenant", ordering="tenant__slug")
    def tenant_slug(self, subscription: Subscription) -> SafeString | str:
        return clipped(subscription.tenant.slug) if subscription.tenant else EMPTY

    @admin.display(description="patterns")
    def patterns(self, subscription: Subscription) -> SafeString:
        return clipped(", ".join(subscription.events))

    @admin.display(description="failures", ordering="consecutive_failures")
    def failures(self, subscription: Subscription) -> int:
        return subscription.consecutive_failures

    @admin.display(description="state", ordering="is_active")
    def state(self, subscription: Subscription) -> SafeString:
        return state_badge(subscription)

    @admin.display(description="deliveries")
    def deliveries(self, subscription: Subscription) -> SafeString:
        url = reverse("admin:deliveries_delivery_changelist")
        query = urlencode({"subscription__id__exact": subscription.pk})
        return format_html(
            '<a href="{}?{}">all</a> · <a href="{}?{}&amp;status__exact=failed">failed</a>', url, query, url, query
        )

    # Deleting keeps the delivery history (a soft delete, as the API's DELETE): see delete_keeping_history.
    def has_delete_permission(self, request: HttpRequest, obj: Subscription | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Subscription | None = None) -> bool:
        return super().has_change_permission(request, obj) and not (obj and obj.is_deleted)

    @admin.action(description="Send a test ping (webhook.ping) and show its outcome", permissions=["change"])
    def send_ping(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        chosen = self._live(request, queryset)
        if len(chosen) > MAX_PINGS:
            self.message_user(request, f"Ping at most {MAX_PINGS} subscriptions at a time.", messages.ERROR)
            return
        for subscription in chosen:
            self._report_ping(request, subscription, ping(subscription))

    def _report_ping(self, request: HttpRequest, subscription: Subscription, result: Result) -> None:
        answer = f"HTTP {result.status_code}" if result.status_code is not None else result.error
        text = f"Ping to {subscription.id} ({safe_url(subscription.url)}): {answer} in {result.duration_ms} ms"
        if result.response_body:
            text += f", response: {result.response_body[:PING_EXCERPT_CHARS]}"
        self.message_user(request, text, messages.SUCCESS if result.success else messages.ERROR)

    @admin.action(description="Disable (pending deliveries fail, recoverable)", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        chosen = [s for s in self._live(request, queryset) if s.is_active]
        reason = f"disabled in the admin by {request.user.get_username()}"
        failed = sum(actions.disable_subscription(s, reason, alert=False) for s in chosen)
        self._done(request, chosen, "Disabled in the admin")
        disabled = counted("Disabled %(count)d subscription", "Disabled %(count)d subscriptions", len(chosen))
        failed_text = counted("%(count)d pending delivery failed", "%(count)d pending deliveries failed", failed)
        self.message_user(request, f"{disabled}; {failed_text}.")

    @admin.action(description="Re-enable", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        chosen = [s for s in self._live(request, queryset) if not s.is_active]
        for subscription in chosen:
            actions.enable_subscription(subscription)
        self._done(request, chosen, "Re-enabled in the admin")
        self.message_user(
            request, counted("Re-enabled %(count)d subscription.", "Re-enabled %(count)d subscriptions.", len(chosen))
        )

    @admin.action(description="Rotate secret (the old one keeps signing for 24 h)", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        chosen = self._live(request, queryset)
        for subscription in chosen:
            subscription.rotate_secret()
        self._done(request, chosen, "Secret rotated in the admin")
        rotated = counted(
            "Rotated the secret of %(count)d subscription; the previous secret keeps signing for 24 hours.",
            "Rotated the secrets of %(count)d subscriptions; the previous secrets keep signing for 24 hours.",
            len(chosen),
        )
        read = "Subscribers read the new one with GET /api/v1/subscriptions/{id}/secret/."
        self.message_user(request, f"{rotated} {read}")

    @admin.action(description="Recover failed deliveries since a date…", permissions=["change"])
    def recover_failed(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> TemplateResponse | None:
        default = {"since": (timezone.now() - RECOVER_DEFAULT_WINDOW).replace(second=0, microsecond=0)}
        form = RecoverForm(request.POST if "apply" in request.POST else None, initial=default)
        if not form.is_valid():
            return self._intermediate(request, queryset, "recover_failed", form, RECOVER_HELP, "Recover")
        chosen = self._live(request, queryset)
        inactive = [s for s in chosen if not s.is_active]
        if inactive:
            ids = ", ".join(s.id for s in inactive)
            self.message_user(request, f"Not recovered, re-enable first: {ids}", messages.WARNING)
        active = [s for s in chosen if s.is_active]
        requeued = sum(actions.recover(s, form.cleaned_data["since"]) for s in active)
        self._done(request, active, f"Recovered failed deliveries since {absolute_time(form.cleaned_data['since'])}")
        done = counted("Re-queued %(count)d failed delivery", "Re-queued %(count)d failed deliveries", requeued)
        of = counted("%(count)d subscription", "%(count)d subscriptions", len(active))
        self.message_user(request, f"{done} of {of}.")
        return None

    @admin.action(description="Delete (keeps the delivery history)…", permissions=["change"])
    def delete_keeping_history(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> TemplateResponse | None:
        form = forms.Form(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return self._intermediate(request, queryset, "delete_keeping_history", form, DELETE_HELP, "Delete")
        chosen = self._live(request, queryset)
        cancelled = sum(actions.delete_subscription(s) for s in chosen)
        self._done(request, chosen, "Deleted in the admin (history kept)")
        deleted = counted("Deleted %(count)d subscription", "Deleted %(count)d subscriptions", len(chosen))
        cancelled_text = counted(
            "%(count)d pending delivery cancelled", "%(count)d pending deliveries cancelled", cancelled
        )
        self.message_user(request, f"{deleted}; {cancelled_text}.")
        return None

    def _live(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> list[Subscription]:
        chosen = list(queryset.select_related("tenant"))
        deleted = [s.id for s in chosen if s.is_deleted]
        if deleted:
            text = ngettext("Skipped a deleted subscription: %s", "Skipped deleted subscriptions: %s", len(deleted))
            self.message_user(request, text % ", ".join(deleted), messages.WARNING)
        return [s for s in chosen if not s.is_deleted]

    def _done(self, request: HttpRequest, subscriptions: list[Subscription], log: str) -> None:
        for subscription in subscriptions:
            self.log_change(request, subscription, log)

    def _intermediate(
        self, request: HttpRequest, queryset: QuerySet, action: str, form: forms.Form, help_text: str, button: str
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": INTERMEDIATE_TITLES[action],
            "opts": self.model._meta,
            "subscriptions": queryset.select_related("tenant"),
            "form": form,
            "action": action,
            "help_text": help_text,
            "button": button,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "select_across": request.POST.get("select_across", "0"),
        }
        return TemplateResponse(request, "admin/subscriptions/subscription/action_form.html", context)


class ApiClientForm(forms.ModelForm):
    name = forms.CharField(max_length=255, help_text="Who uses this client, e.g. 'shop backend'.")
    scope_list = forms.MultipleChoiceField(
        label="Scopes", choices=[(s, s) for s in settings.API_SCOPES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiClient
        fields = ["name", "tenant", "scope_list", "rate_limit"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["name"].initial = self.instance.application.name
            self.fields["scope_list"].initial = self.instance.scope_list


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    """Create and revoke API clients; deleting one revokes its tokens with it."""

    form = ApiClientForm
    list_display = ["name", "client_id", "tenant", "scopes", "rate_limit", "created"]
    list_select_related = ["application", "tenant"]
    search_fields = ["application__name", "application__client_id", "tenant__slug"]
    list_filter = ["tenant"]
    created = time_field("created_at", "created")

    class Media:
        css = {"all": [STYLESHEET]}

    @admin.display(ordering="application__name")
    def name(self, client: ApiClient) -> str:
        return client.application.name

    @admin.display(description="client id")
    def client_id(self, client: ApiClient) -> str:
        return client.application.client_id

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        return ["tenant"] if obj else []

    def save_model(self, request, obj: ApiClient, form: ApiClientForm, change: bool) -> None:
        scopes = form.cleaned_data["scope_list"]
        if change:
            obj.scopes = " ".join(scopes)
            obj.application.name = form.cleaned_data["name"]
            obj.application.save(update_fields=["name"])
            obj.save()
            return
        tenant = form.cleaned_data.get("tenant")
        new = create_api_client(form.cleaned_data["name"], tenant.slug if tenant else None, scopes)
        new.client.rate_limit = obj.rate_limit
        new.client.save(update_fields=["rate_limit"])
        obj.pk, obj.application = new.client.pk, new.client.application
        messages.warning(
            request,
            f"Client id {new.client.application.client_id}, client secret {new.client_secret} — "
            "copy the secret now: it is stored hashed and will not be shown again.",
        )

    def delete_model(self, request, obj: ApiClient) -> None:
        obj.application.delete()

    def delete_queryset(self, request, queryset) -> None:
        for client in queryset.select_related("application"):
            client.application.delete()
