"""The dashboard page inside the admin: /admin/dashboard/, linked from the admin index."""

from collections.abc import Callable

from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone

from deliveries import chart, dashboard
from deliveries.admin_display import duration_text

TEMPLATE = "admin/deliveries/dashboard.html"


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
