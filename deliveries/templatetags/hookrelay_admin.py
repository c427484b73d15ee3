"""Template filters for the admin's own pages, so they show times as its lists and change pages do."""

from datetime import datetime

from django import template
from django.utils.safestring import SafeString

from deliveries.admin_display import absolute_time, time_html

register = template.Library()


@register.filter
def when(value: datetime | None) -> SafeString | str:
    """The absolute time with how long ago or how soon it is."""
    return time_html(value)


@register.filter
def utc(value: datetime) -> str:
    """The absolute time alone: ``2026-12-08 14:03:21 UTC``."""
    return absolute_time(value)
