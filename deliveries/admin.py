from django.contrib import admin

from deliveries.models import Attempt, Delivery


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "duration_ms", "status_code", "success", "error", "response_body"]
    readonly_fields = fields
    ordering = ["-number"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "event_type", "subscription", "status", "attempt_count", "next_attempt_at", "created_at"]
    list_filter = ["status", "event_type"]
    list_select_related = ["subscription"]
    search_fields = ["id", "event__id", "subscription__url"]
    readonly_fields = [field.name for field in Delivery._meta.fields]
    inlines = [AttemptInline]


@admin.register(Attempt)
class AttemptAdmin(admin.ModelAdmin):
    list_display = ["delivery", "number", "started_at", "status_code", "success", "error", "duration_ms"]
    list_filter = ["success"]
    search_fields = ["delivery__id", "delivery__event__id"]
    readonly_fields = [field.name for field in Attempt._meta.fields]

    def has_change_permission(self, request, obj=None) -> bool:
        return False
