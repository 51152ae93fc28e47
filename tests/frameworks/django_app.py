"""The example policy's routes as a Django project in one file, served by Django's own
development server (the `runserver` request handler and threaded WSGI server), with the
default middleware an app starts from (CommonMiddleware: APPEND_SLASH).

Identity is read from `request.META`, the CGI-style environ: Django's server drops headers
with `_` in their names, but `.` and other look-alikes still land as written, and `Remote-User`
arrives as `HTTP_REMOTE_USER`.
"""

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="framework-suite-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from report import IDENTITY, REPORT_HEADER, announce, report  # noqa: E402


def meta_key(header):
    return "HTTP_" + header.upper().replace("-", "_")


def answer(request, handler, status=200, **params):
    identity = None
    if handler is not None:
        identity = {key: request.META.get(meta_key(name)) for key, name in IDENTITY.items()}
    body = report("django", handler, request.method, params, identity)
    response = HttpResponse(body, status=status, content_type="application/json")
    response[REPORT_HEADER] = body
    return response


def route(handler, methods):
    """A view for one route that answers only its methods, like `require_http_methods`."""

    def view(request, **params):
        if request.method not in methods:
            return answer(request, None, 405)
        return answer(request, handler, **params)

    return view


urlpatterns = [
    path("health", route("health", {"GET", "HEAD"})),
    path("static/<path:rest>", route("static", {"GET", "HEAD"})),
    path("admin/users", route("admin_users", {"GET", "HEAD", "POST"})),
    path("admin/users/<str:id>", route("admin_user", {"GET", "HEAD", "PUT", "PATCH", "DELETE"})),
    path("projects", route("project_create", {"POST"})),
    path("projects/<str:id>", route("project", {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})),
    path("users/<str:id>", route("user", {"GET", "HEAD", "PUT", "PATCH", "DELETE"})),
    path("users/<str:id>/settings", route("user_settings", {"GET", "HEAD", "PUT"})),
    path("reports/<str:year>", route("report", {"GET", "HEAD"})),
]


def handler404(request, exception):
    return answer(request, None, 404)


if __name__ == "__main__":
    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(WSGIHandler())
    announce(server.server_address[1])
    server.serve_forever()
