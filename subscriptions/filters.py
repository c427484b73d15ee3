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
        return queryset.filter(id__in=queryset.select_related(None).matching_ids(value))
