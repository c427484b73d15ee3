import django_filters

from deliveries.models import Delivery, Status
from subscriptions.filters import validate_event_type


class DeliveryFilter(django_filters.FilterSet):
    subscription = django_filters.CharFilter(field_name="subscription_id")
    event = django_filters.CharFilter(field_name="event_id")
    event_type = django_filters.CharFilter(validators=[validate_event_type])
    status = django_filters.ChoiceFilter(choices=Status.choices)

    class Meta:
        model = Delivery
        fields = ["subscription", "status", "event_type", "event"]
