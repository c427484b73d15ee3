from django import forms
from django.conf import settings
from django.contrib import admin, messages

from subscriptions.clients import create_api_client
from subscriptions.models import ApiClient, Subscription, Tenant


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["id", "url", "tenant", "events", "is_active", "disabled_reason", "consecutive_failures"]
    list_filter = ["is_active", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["id", "url", "tenant__slug"]
    readonly_fields = [
        "id",
        "previous_secret_expires_at",
        "consecutive_failures",
        "last_success_at",
        "created_at",
        "updated_at",
        "deleted_at",
    ]
    exclude = ["previous_secret"]


class ApiClientForm(forms.ModelForm):
    name = forms.CharField(max_length=255, help_text="Who uses this client, e.g. 'shop backend'.")
    scope_list = forms.MultipleChoiceField(
        label="Scopes", choices=[(s, s) for s in settings.API_SCOPES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiClient
        fields = ["name", "tenant", "scope_list"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["name"].initial = self.instance.application.name
            self.fields["scope_list"].initial = self.instance.scope_list


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    """Create and revoke API clients; deleting one revokes its tokens with it."""

    form = ApiClientForm
    list_display = ["name", "client_id", "tenant", "scopes", "created_at"]
    list_select_related = ["application", "tenant"]
    search_fields = ["application__name", "application__client_id", "tenant__slug"]
    list_filter = ["tenant"]

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
