from django.contrib import admin

from webhooks.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "type", "tenant", "created_at"]
    list_filter = ["type", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["id", "idempotency_key", "correlation_id"]
    readonly_fields = [field.name for field in Event._meta.fields]

    def has_change_permission(self, request, obj=None) -> bool:  # history is not edited
        return False
