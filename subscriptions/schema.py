"""OpenAPI: describe our bearer-token authentication as django-oauth-toolkit's, which it extends."""

from drf_spectacular.contrib.django_oauth_toolkit import DjangoOAuthToolkitScheme


class TokenAuthenticationScheme(DjangoOAuthToolkitScheme):
    target_class = "subscriptions.tenancy.TokenAuthentication"
