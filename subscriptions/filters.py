import django_filters
from django.db.models import QuerySet

from subscriptions.models import Subscription


class SubscriptionFilter(django_filters.FilterSet):
    is_active = django_filters.BooleanFilter()
    event = django_filters.CharFilter(method="receiving", label="Only subscriptions that receive this event type")

    class Meta:
        model = Subscription
        fields = ["is_active", "event"]

    def receiving(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        matching = [s.id for s in queryset.only("id", "events") if s.matches(value)]
        return queryset.filter(id__in=matching)
