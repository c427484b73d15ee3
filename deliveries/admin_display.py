"""How the admin shows times: one absolute format with its zone, and how far that is from now."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.contrib import admin
from django.db import models
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

ABSOLUTE_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
DURATION_UNITS = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]
NOW = timedelta(seconds=1)  # closer than this either way reads "now"
EMPTY = "—"  # what the admin shows for no value
STYLESHEET = "hookrelay/admin.css"


def absolute_time(when: datetime) -> str:
    """``2026-12-08 14:03:21 UTC``, whatever the time zone of ``when``."""
    return when.astimezone(UTC).strftime(ABSOLUTE_FORMAT)


def duration_text(span: timedelta | None) -> str:
    """The largest unit and the next one, rounded down: ``2 d 3 h``, ``3 h``, ``4 min 59 s``, ``12 s``."""
    if span is None:
        return EMPTY
    seconds = max(int(span.total_seconds()), 0)
    units = [(name, size) for name, size in DURATION_UNITS if size <= seconds] or DURATION_UNITS[-1:]
    (name, size), *smaller = units
    text = f"{seconds // size} {name}"
    if smaller and (rest := seconds % size // smaller[0][1]):
        text += f" {rest} {smaller[0][0]}"
    return text


def relative_time(when: datetime, now: datetime | None = None) -> str:
    """``in 40 s``, ``3 h 12 min ago``, or ``now`` within a second either way."""
    offset = when - (now or timezone.now())
    if abs(offset) < NOW:
        return "now"
    return f"in {duration_text(offset)}" if offset > timedelta(0) else f"{duration_text(-offset)} ago"


def time_html(when: datetime | None, now: datetime | None = None) -> SafeString | str:
    """The absolute time with the relative one beside it (below it where the stylesheet is loaded)."""
    if when is None:
        return EMPTY
    return format_html(
        '<span class="hr-time"><time datetime="{}">{}</time> <span class="hr-ago">{}</span></span>',
        when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        absolute_time(when),
        relative_time(when, now),
    )


def clipped(text: str) -> SafeString:
    """``text`` cut to its column by the stylesheet, whole in the title."""
    return format_html('<span class="hr-clip" title="{}">{}</span>', text, text)


def time_field(field: str, description: str) -> Callable[[admin.ModelAdmin, models.Model], SafeString | str]:
    """A ModelAdmin column or read-only field that shows ``field`` by ``time_html``, sortable by it."""

    @admin.display(description=description, ordering=field)
    def show(model_admin: admin.ModelAdmin, obj: models.Model) -> SafeString | str:
        return time_html(getattr(obj, field))

    return show
