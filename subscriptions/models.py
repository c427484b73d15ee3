from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models
from django.utils import timezone

from subscriptions import topics
from subscriptions.ids import new_subscription_id, new_tenant_id
from subscriptions.signing import generate_secret

ROTATION_OVERLAP = timedelta(hours=24)


class Tenant(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_tenant_id, editable=False)
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class SubscriptionQuerySet(models.QuerySet):
    def live(self) -> "SubscriptionQuerySet":
        return self.filter(deleted_at__isnull=True)

    def for_tenant(self, tenant: Tenant | None) -> "SubscriptionQuerySet":
        return self.filter(tenant=tenant) if tenant else self.filter(tenant__isnull=True)

    def matching_ids(self, event_type: str) -> list[str]:
        """Ids of the subscriptions in this queryset whose patterns match ``event_type``."""
        candidates = self.values_list("id", "events")
        return [pk for pk, patterns in candidates if any(topics.matches(p, event_type) for p in patterns)]

    def receiving(self, event_type: str, tenant: Tenant | None) -> list[str]:
        """Ids of the active subscriptions of ``tenant`` (or of no tenant) that receive ``event_type``."""
        return self.live().for_tenant(tenant).filter(is_active=True).matching_ids(event_type)


class Subscription(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_subscription_id, editable=False)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="subscriptions")
    url = models.URLField(max_length=2048)
    events = models.JSONField(default=list, help_text="Topic patterns: '*' is one word, '#' zero or more.")
    description = models.CharField(max_length=500, blank=True)
    secret = models.CharField(max_length=128, default=generate_secret)
    previous_secret = models.CharField(max_length=128, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_success_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "is_active"], name="subscription_tenant_active")]

    def __str__(self) -> str:
        return f"{self.id} {self.url}"

    def matches(self, event_type: str) -> bool:
        return any(topics.matches(pattern, event_type) for pattern in self.events)

    def signing_secrets(self, now=None) -> list[str]:
        """The current secret, then the previous one while its rotation overlap lasts."""
        if not self.previous_secret:  # the usual case, and every delivery asks: no clock needed
            return [self.secret]
        now = now or timezone.now()
        if self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            return [self.secret, self.previous_secret]
        return [self.secret]

    def rotate_secret(self, new_secret: str | None = None) -> str:
        self.previous_secret = self.secret
        self.previous_secret_expires_at = timezone.now() + ROTATION_OVERLAP
        self.secret = new_secret or generate_secret()
        self.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
        return self.secret

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


class ApiClient(models.Model):
    """An OAuth2 client (client credentials grant) with the tenant it acts for and the scopes it may ask for."""

    application = models.OneToOneField(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL, on_delete=models.CASCADE, related_name="api_client"
    )
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="api_clients")
    scopes = models.CharField(max_length=500, help_text="Space-separated scopes this client may ask for.")
    rate_limit = models.CharField(
        max_length=30, blank=True, help_text="Overrides API_RATE_LIMIT for this client, e.g. 5000/min. Empty: default."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"{self.application.name} ({self.tenant or 'platform'})"

    def clean(self) -> None:
        from config.ratelimit import parse_rate

        if self.rate_limit:
            try:
                parse_rate(self.rate_limit)
            except ImproperlyConfigured as exc:
                raise ValidationError({"rate_limit": str(exc)}) from None

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()
