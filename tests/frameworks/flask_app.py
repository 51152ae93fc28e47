"""The example policy's routes as a Flask app on Werkzeug's own server, set up the way Flask's
documentation shows: the documented `X-HTTP-Method-Override` middleware included, because
applications copy it (it lets any request pick its method, which only the gateway's stripping
of that header keeps from running a handler the policy did not judge).

Identity is read with `request.headers`, which Werkzeug builds from the WSGI environ: a header
sent as `X_Auth_Role` lands on the same `HTTP_X_AUTH_ROLE` key as `X-Auth-Role`.
"""

import sys

from flask import Flask, request, make_response
from werkzeug.serving import make_server

from report import IDENTITY, REPORT_HEADER, announce, report

# No static folder: Flask's own would take /static/<path> before the app's route.
app = Flask(__name__, static_folder=None)


class HTTPMethodOverrideMiddleware:
    """The middleware from Flask's documentation (patterns: "Adding HTTP Method Overrides")."""

    allowed_methods = frozenset(["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"])
    bodyless_methods = frozenset(["GET", "HEAD", "OPTIONS", "DELETE"])

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method in self.allowed_methods:
            environ["REQUEST_METHOD"] = method
        if method in self.bodyless_methods:
            environ["CONTENT_LENGTH"] = "0"
        return self.app(environ, start_response)


app.wsgi_app = HTTPMethodOverrideMiddleware(app.wsgi_app)


def answer(handler, status=200, **params):
    identity = None
    if handler is not None:
        identity = {key: request.headers.get(name) for key, name in IDENTITY.items()}
    body = report("flask", handler, request.method, params, identity)
    response = make_response(body, status)
    response.headers["Content-Type"] = "application/json"
    response.headers[REPORT_HEADER] = body
    return response


@app.route("/health", methods=["GET"])
def health():
    return answer("health")


@app.route("/static/<path:rest>", methods=["GET"])
def static_file(rest):
    return answer("static", rest=rest)


@app.route("/admin/users", methods=["GET", "POST"])
def admin_users():
    return answer("admin_users")


@app.route("/admin/users/<id>", methods=["GET", "PUT", "PATCH", "DELETE"])
def admin_user(id):
    return answer("admin_user", id=id)


@app.route("/projects", methods=["POST"])
def project_create():
    return answer("project_create")


@app.route("/projects/<id>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def project(id):
    return answer("project", id=id)


@app.route("/users/<id>", methods=["GET", "PUT", "PATCH", "DELETE"])
def user(id):
    return answer("user", id=id)


@app.route("/users/<id>/settings", methods=["GET", "PUT"])
def user_settings(id):
    return answer("user_settings", id=id)


@app.route("/reports/<year>", methods=["GET"])
def reports(year):
    return answer("report", year=year)


@app.errorhandler(404)
def not_found(_error):
    return answer(None, 404)


@app.errorhandler(405)
def not_allowed(_error):
    return answer(None, 405)


if __name__ == "__main__":
    server = make_server("127.0.0.1", 0, app, threaded=True)
    announce(server.port)
    server.serve_forever()
