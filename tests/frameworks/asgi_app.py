"""The example policy's routes as a Starlette app on uvicorn, the usual ASGI pair.

Identity is read with `request.headers` (the ASGI header list, names lower-cased by the
server, no `_`/`-` folding).
"""

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from report import IDENTITY, REPORT_HEADER, announce, listening_socket, report


def answer(request: Request, handler, status=200, **params):
    identity = None
    if handler is not None:
        identity = {key: request.headers.get(name) for key, name in IDENTITY.items()}
    body = report("starlette", handler, request.method, params, identity)
    return Response(
        body, status_code=status, media_type="application/json", headers={REPORT_HEADER: body}
    )


def endpoint(handler):
    async def view(request: Request):
        return answer(request, handler, **request.path_params)

    return view


routes = [
    Route("/health", endpoint("health"), methods=["GET"]),
    Route("/static/{rest:path}", endpoint("static"), methods=["GET"]),
    Route("/admin/users", endpoint("admin_users"), methods=["GET", "POST"]),
    Route("/admin/users/{id}", endpoint("admin_user"), methods=["GET", "PUT", "PATCH", "DELETE"]),
    Route("/projects", endpoint("project_create"), methods=["POST"]),
    Route("/projects/{id}", endpoint("project"), methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    Route("/users/{id}", endpoint("user"), methods=["GET", "PUT", "PATCH", "DELETE"]),
    Route("/users/{id}/settings", endpoint("user_settings"), methods=["GET", "PUT"]),
    Route("/reports/{year}", endpoint("report"), methods=["GET"]),
]


async def not_found(request, _exc):
    return answer(request, None, 404)


async def not_allowed(request, _exc):
    return answer(request, None, 405)


app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})

if __name__ == "__main__":
    sock = listening_socket()
    announce(sock.getsockname()[1])
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
