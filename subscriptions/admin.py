from django.contrib import admin

from subscriptions.models import Subscription, Tenant


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
