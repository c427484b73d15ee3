"""List filters that refuse a value they cannot use (``?is_active=maybe`` is 400, never ignored)."""

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from subscriptions import topics
from subscriptions.models import Subscription

TRUE, FALSE = ("true", "1"), ("false", "0")


class BooleanValueField(forms.Field):
    """``true``/``false`` or ``1``/``0``, in any case; anything else is invalid, not "no filter"."""

    default_error_messages = {"invalid": "must be true or false (or 1 or 0)"}

    def to_python(self, value: str | None) -> bool | None:
        if value in self.empty_values:
            return None
        if value.lower() in TRUE:
            return True
        if value.lower() in FALSE:
            return False
        raise ValidationError(self.error_messages["invalid"], code="invalid")


class BooleanFilter(django_filters.BooleanFilter):
    # django-filter's widgets turn a value they do not know into None, which drops the filter silently.
    field_class = BooleanValueField

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("widget", forms.TextInput)
        super().__init__(*args, **kwargs)


def validate_event_type(value: str) -> None:
    if not topics.is_valid_event_type(value):
        raise ValidationError(
            "must be an event type: 1 to 10 dot-separated words of [a-z0-9_-], at most 128 characters"
        )


class SubscriptionFilter(django_filters.FilterSet):
    is_active = BooleanFilter()
    event = django_filters.CharFilter(
        method="receiving", label="Only subscriptions that receive this event type", validators=[validate_event_type]
    )

    class Meta:
        model = Subscription
        fields = ["is_active", "event"]

    def receiving(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(id__in=queryset.select_related(None).matching_ids(value))
