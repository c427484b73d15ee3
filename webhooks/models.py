from datetime import UTC

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone

from subscriptions.ids import make_id
from subscriptions.models import Tenant


def new_event_id() -> str:
    return make_id("evt")


class Event(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_event_id, editable=False)
    type = models.CharField(max_length=128, db_index=True)
    data = models.JSONField(encoder=DjangoJSONEncoder)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    idempotency_scope = models.CharField(max_length=100, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_scope", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="event_idempotency_key_unique",
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.type}"

    def payload(self) -> dict:
        """What a subscriber receives as the JSON body (docs/api.md)."""
        timestamp = self.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {"id": self.id, "type": self.type, "timestamp": timestamp, "data": self.data}
