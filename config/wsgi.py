import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.request_body import RequestBodyMiddleware  # noqa: E402 - reads settings, configured above

application = RequestBodyMiddleware(get_wsgi_application())
