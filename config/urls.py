from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import views
from config.oauth import TokenView

handler400 = "config.api.bad_request"
handler404 = "config.api.not_found"
handler500 = "config.api.server_error"

# Events first: every include tried before the one that matches builds the list of its patterns for a
# 404 page (Django's "tried"), and POST /api/v1/events/ is the API's busiest path.
api_v1 = [
    path("", include("webhooks.urls")),
    path("", include("subscriptions.urls")),
    path("", include("deliveries.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("oauth/token/", TokenView.as_view(), name="oauth-token"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # The same resources, versioned by the Accept header instead of the path.
    path("api/", include(api_v1)),
    path("healthz", views.healthz, name="healthz"),
    path("healthz/workers", views.healthz_workers, name="healthz-workers"),
    path("metrics", views.metrics, name="metrics"),
]
