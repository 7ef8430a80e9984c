"""The live view's routes (runtime/view.py says what each one does); imported only when the
view starts, with aiohttp installed."""

from __future__ import annotations

import asyncio
import json
import socket

from aiohttp import WSCloseCode, web

from .view import COOKIE, STATUS_EVERY_S, control_error
from .view_page import page_html

MAX_BODY = 64 * 1024  # a control request is a small JSON object
SEND_BUFFER = 256 * 1024  # bytes the kernel holds for one stream client


def _error(status: int, problem: str, fix: str | None = None) -> web.Response:
    return web.json_response({"error": problem, "fix": fix}, status=status)


def make_app(view) -> web.Application:
    @web.middleware
    async def authorize(request, handler):
        if not view.authorized(request):
            return _error(
                401,
                "this live view needs its token",
                "send the header 'Authorization: Bearer TOKEN', or open /?token=TOKEN once",
            )
        return await handler(request)

    async def on_shutdown(_app) -> None:
        for ws in list(view.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the line runtime stops")

    app = web.Application(middlewares=[authorize], client_max_size=MAX_BODY)
    app.on_shutdown.append(on_shutdown)
    routes = _Routes(view)
    app.add_routes(
        [
            web.get("/", routes.page),
            web.get("/ws", routes.stream),
            web.get("/api/cameras", routes.cameras),
            web.get("/api/cameras/{name}", routes.camera),
            web.get("/api/cameras/{name}/ng/{frame}.jpg", routes.ng_frame),
            web.get("/api/changeovers", routes.changeovers),
            web.post("/api/cameras/{name}/threshold", routes.threshold),
            web.post("/api/cameras/{name}/changeover", routes.changeover),
        ]
    )
    return app


class _Routes:
    def __init__(self, view):
        self.view = view

    def _camera(self, request):
        camera = self.view.cameras.get(request.match_info["name"])
        if camera is None:
            names = ", ".join(self.view.cameras)
            raise web.HTTPNotFound(
                text=json.dumps(
                    {
                        "error": f"no camera {request.match_info['name']!r}",
                        "fix": f"one of: {names}",
                    }
                ),
                content_type="application/json",
            )
        return camera

    async def page(self, request) -> web.Response:
        response = web.Response(text=page_html(), content_type="text/html")
        token = request.query.get("token")
        if token and self.view.config.token is not None:  # the page's own requests carry it
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        response.headers["Cache-Control"] = "no-store"
        return response

    async def cameras(self, _request) -> web.Response:
        clients = [
            {
                "cameras": c["cameras"],
                "sent": c["sent"],
                # frames kept for the stream since the one last sent to this client
                "behind": {
                    name: self.view.cameras[name].version - c["seen"].get(name, 0)
                    for name in c["cameras"]
                },
            }
            for c in list(self.view.clients.values())
        ]
        return web.json_response(
            {
                "cameras": [c.status() for c in self.view.cameras.values()],
                "max_fps": self.view.config.max_fps,
                "clients": clients,
            }
        )

    async def camera(self, request) -> web.Response:
        return web.json_response(self._camera(request).status(scores=True))

    async def ng_frame(self, request) -> web.Response:
        camera = self._camera(request)
        wanted = request.match_info["frame"]
        snap = camera.ng_frame(int(wanted)) if wanted.isdigit() else None
        if snap is None:
            return _error(404, f"frame {wanted} is not among the last NG frames kept", None)
        loop = asyncio.get_running_loop()
        heat = (await loop.run_in_executor(None, snap.jpegs))[1]
        return web.Response(body=heat, content_type="image/jpeg")

    async def changeovers(self, _request) -> web.Response:
        return web.json_response({"changeovers": self.view.control.changeovers()})

    async def _body(self, request, key: str, kinds, what: str):
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(
                text=json.dumps({"error": "send JSON", "fix": "Content-Type: application/json"}),
                content_type="application/json",
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        value = body.get(key) if isinstance(body, dict) else None
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {"error": f"{key} missing or not {what}", "fix": f'{{"{key}": …}}'}
                ),
                content_type="application/json",
            )
        return value

    async def _control(self, call) -> web.Response:
        """A control call (blocking: it waits for the line's loop) in a worker thread."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, call)
        except Exception as exc:  # noqa: BLE001 - mapped to a status; anything else re-raised
            status, problem, fix = control_error(exc)
            return _error(status, problem, fix)
        return web.json_response(result)

    async def threshold(self, request) -> web.Response:
        camera = self._camera(request)
        value = await self._body(request, "threshold", (int, float), "a number")
        scores = [s for _, s in list(camera.scores)]
        return await self._control(
            lambda: self.view.control.threshold(camera.name, float(value), scores)
        )

    async def changeover(self, request) -> web.Response:
        camera = self._camera(request)
        bundle = await self._body(request, "bundle", (str,), "a bundle folder")
        return await self._control(lambda: self.view.control.changeover(camera.name, bundle))

    async def stream(self, request) -> web.WebSocketResponse:
        """Frames of the cameras asked for (``?camera=a,b``; all by default) and their
        counters. Each send waits for the client, so a slow one skips to the newest frame."""
        names = [n for n in request.query.get("camera", "").split(",") if n]
        cameras = [self.view.cameras[n] for n in names if n in self.view.cameras] or list(
            self.view.cameras.values()
        )
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        _bound_send_buffer(request)
        client = {"cameras": [c.name for c in cameras], "sent": 0, "seen": {}}
        self.view.sockets.add(ws)
        self.view.clients[id(ws)] = client
        for camera in cameras:
            camera.watchers += 1
        sender = asyncio.ensure_future(self._push(ws, cameras, client))
        try:
            async for _ in ws:  # the page sends nothing the server needs
                pass
        finally:
            sender.cancel()
            for camera in cameras:
                camera.watchers -= 1
            self.view.sockets.discard(ws)
            self.view.clients.pop(id(ws), None)
        return ws

    async def _push(self, ws, cameras, client: dict) -> None:
        try:
            await self._send_frames(ws, cameras, client)
        except (ConnectionResetError, RuntimeError):  # the client went away
            await ws.close()

    async def _send_frames(self, ws, cameras, client: dict) -> None:
        loop = asyncio.get_running_loop()
        seen = client["seen"]  # camera -> the stream version last sent
        status_due = 0.0
        tick = min(c.period for c in cameras) / 2 if cameras else STATUS_EVERY_S
        while not ws.closed:
            for camera in cameras:
                snap = camera.latest
                if snap is not None and snap.version != seen.get(camera.name):
                    seen[camera.name] = snap.version
                    message = await loop.run_in_executor(None, snap.message, camera.name)
                    await ws.send_json(message)
                    client["sent"] += 1
            if loop.time() >= status_due:
                status_due = loop.time() + STATUS_EVERY_S
                await ws.send_json({"type": "status", "cameras": [c.status() for c in cameras]})
            await asyncio.sleep(tick)


def _bound_send_buffer(request) -> None:
    """The kernel's send buffer for a stream is bounded, so a client that stops reading is
    noticed (its sends wait, and it is given the newest frame when it reads again) after
    ~SEND_BUFFER bytes rather than after megabytes that would reach it seconds late."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
