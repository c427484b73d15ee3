"""Sessions, the signed-in user and messages: for the pages people open in a browser, not for the API.

A request under ``/api/`` authenticates with a bearer token (DRF, no session authentication) and its
answers never carry a message, so these middlewares leave it alone: a session store, a lazy user and a
message store made for every API request were about 5 % of an ingest request's instructions.
They stay in ``MIDDLEWARE`` under their own names, as subclasses, which the admin's system checks look for;
the admin, the dashboard and ``/oauth/`` get them as before.
"""

from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest

API_PREFIX = "/api/"


def for_browsers(request: HttpRequest) -> bool:
    return not request.path_info.startswith(API_PREFIX)


class SessionMiddleware(sessions.SessionMiddleware):
    # Without request.session, Django's process_response leaves the response alone.
    def process_request(self, request: HttpRequest) -> None:
        if for_browsers(request):
            super().process_request(request)


class AuthenticationMiddleware(auth.AuthenticationMiddleware):
    def process_request(self, request: HttpRequest) -> None:
        if for_browsers(request):
            super().process_request(request)


class MessageMiddleware(messages.MessageMiddleware):
    # Without request._messages, Django's process_response leaves the response alone.
    def process_request(self, request: HttpRequest) -> None:
        if for_browsers(request):
            super().process_request(request)
