from __future__ import annotations

from django.contrib import admin
from django.contrib.staticfiles.views import serve as staticfiles_serve
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.core import health

urlpatterns = [
    path("", RedirectView.as_view(url="/docs/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/", include("attune.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("health/", health.details, name="health"),
    path("api-auth/", include("rest_framework.urls")),
]

# The embedded server is the only web server: it serves admin and Swagger UI assets itself, straight
# from the installed apps (no collectstatic step). Behind a reverse proxy, point it at STATIC_ROOT instead.
urlpatterns += [re_path(r"^static/(?P<path>.*)$", staticfiles_serve, {"insecure": True})]
