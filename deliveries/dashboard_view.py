"""The dashboard page inside the admin: /admin/dashboard/, linked from the admin index."""

from collections.abc import Callable
from datetime import timedelta

from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone

from deliveries import chart, dashboard

TEMPLATE = "admin/deliveries/dashboard.html"
DURATION_UNITS = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]


def duration_text(age: timedelta | None) -> str:
    """The two largest units: ``2 d 3 h``, ``3 h 12 min``, ``12 s``."""
    if age is None:
        return "—"
    remaining, parts = max(int(age.total_seconds()), 0), []
    for name, size in DURATION_UNITS:
        value, remaining = divmod(remaining, size)
        if value:
            parts.append(f"{value} {name}")
    return " ".join(parts[:2]) or "0 s"


def percent_text(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def dashboard_view(site: AdminSite) -> Callable[[HttpRequest], HttpResponse]:
    def view(request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm("deliveries.view_delivery"):
            raise PermissionDenied
        summary = dashboard.summary(timezone.now())
        context = {
            **site.each_context(request),
            "title": "Delivery dashboard",
            "summary": summary,
            "chart": chart.stacked_bars(summary.hours),
            "legend": [(status, chart.STATUS_COLOURS[status], summary.total(status)) for status in chart.STACK_ORDER],
            "success_rate": percent_text(summary.success_rate),
            "oldest_pending": duration_text(summary.oldest_pending_age),
        }
        return TemplateResponse(request, TEMPLATE, context)

    return view


def add_dashboard(site: AdminSite) -> None:
    """Serve the dashboard at ``<admin>/dashboard/`` (URL name ``admin:dashboard``) and link it from the index."""
    get_urls = site.get_urls

    def urls() -> list[URLPattern]:
        return [path("dashboard/", site.admin_view(dashboard_view(site)), name="dashboard"), *get_urls()]

    site.get_urls = urls
    site.index_template = "admin/hookrelay_index.html"
