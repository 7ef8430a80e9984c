"""An OPC-UA server for the PLC (sink ``opcua://HOST:PORT``; asyncua, ``pip install -e ".[line]"``).

One server per endpoint in the process, with one object per camera (its ``camera`` name,
in namespace ``urn:dmgrd-edge:line``) holding:

| variable | type | what |
|---|---|---|
| ``LastDecision`` | String | ``OK`` or ``NG`` of the last decided frame |
| ``LastScore`` | Double | its score |
| ``LastFrame`` | Int64 | its frame index |
| ``LastTime`` | String | when it was decided (UTC, ISO 8601) |
| ``Frames``, ``OK``, ``NG`` | UInt64 | counters |
| ``Sequence`` | UInt64 | results published: a PLC that sees it jump by more than 1 missed some |
| ``ResultReady`` | Boolean | set with every new result; the PLC writes False once it has read it |

``write`` never waits for the server: it keeps the camera's latest result and wakes the
server's event loop (its own thread), which writes the values; a PLC polling slower than
the camera sees the latest result and the counters. Bound to 127.0.0.1 unless another host
is given; the endpoint offers no security (no encryption, anonymous): keep it on the
machine network, behind the plant firewall.
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit

from dmgrd_edge.errors import ConfigError

from .mqtt_sink import event_record
from .sinks import SinkError

NAMESPACE = "urn:dmgrd-edge:line"

_VARIABLES = (  # name, VariantType name, initial value
    ("LastDecision", "String", ""),
    ("LastScore", "Double", 0.0),
    ("LastFrame", "Int64", -1),
    ("LastTime", "String", ""),
    ("Frames", "UInt64", 0),
    ("OK", "UInt64", 0),
    ("NG", "UInt64", 0),
    ("Sequence", "UInt64", 0),
    ("ResultReady", "Boolean", False),
)


def parse_opcua_uri(uri: str) -> tuple[str, int]:
    parts = urlsplit(uri)
    fix = "use opcua://HOST:PORT, e.g. opcua://127.0.0.1:4840"
    if parts.scheme != "opcua" or parts.path not in ("", "/") or parts.query:
        raise SinkError(f"bad OPC-UA sink {uri!r}", fix)
    try:
        port = parts.port or 4840
    except ValueError:
        raise SinkError(f"bad port in {uri!r}", fix) from None
    return parts.hostname or "127.0.0.1", port


class OpcUaServer:
    """The asyncua server in its own thread and event loop."""

    def __init__(self, host: str, port: int, log=print):
        try:
            import asyncua  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "the OPC-UA sink needs the asyncua package, which is not installed",
                'pip install -e ".[line]" (or pip install asyncua)',
            ) from exc
        self.host, self.port, self.log = host, port, log
        self.endpoint = f"opc.tcp://{host}:{port}/dmgrd/"
        self.cameras: dict[str, dict] = {}  # name -> latest values (written by the loop)
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.users = 0
        self._thread = threading.Thread(target=self._run, name="dmgrd-opcua", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise SinkError(
                f"cannot serve OPC-UA on {host}:{port}: {self._error}",
                "give a free port (opcua://HOST:PORT) or stop what holds it",
            )
        log(f"opcua: {self.endpoint}")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the thread that started it
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        from asyncua import Server

        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("dmgrd-edge line")
        self.ns = await server.register_namespace(NAMESPACE)
        self._server, self._nodes = server, {}
        async with server:
            self._ready.set()
            while not self._stop.is_set():
                await self._add_cameras()
                await self._write()
                self._wake.clear()
                if not self._dirty:
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                    except asyncio.TimeoutError:
                        pass
            await self._write()

    async def _add_cameras(self) -> None:
        from asyncua import ua

        with self._lock:
            missing = [name for name in self.cameras if name not in self._nodes]
        for name in missing:
            obj = await self._server.nodes.objects.add_object(self.ns, name)
            nodes = {}
            for var, kind, initial in _VARIABLES:
                node = await obj.add_variable(
                    self.ns, var, ua.Variant(initial, getattr(ua.VariantType, kind))
                )
                if var == "ResultReady":
                    await node.set_writable()
                nodes[var] = (node, getattr(ua.VariantType, kind))
            self._nodes[name] = nodes

    async def _write(self) -> None:
        with self._lock:
            dirty = [(n, dict(self.cameras[n])) for n in self._dirty if n in self._nodes]
            for name, _ in dirty:
                self._dirty.discard(name)
        for name, values in dirty:
            for var, value in values.items():
                node, kind = self._nodes[name][var]
                await node.write_value(value, kind)

    # -- from other threads ------------------------------------------------------------------
    def add_camera(self, name: str) -> None:
        with self._lock:
            self.cameras.setdefault(name, {})
            self.users += 1
        self.loop.call_soon_threadsafe(self._wake.set)

    def publish(self, name: str, values: dict) -> None:
        with self._lock:
            self.cameras[name].update(values)
            self._dirty.add(name)
        self.loop.call_soon_threadsafe(self._wake.set)

    def release(self) -> bool:
        """One user fewer; the last one stops the server (True then)."""
        with self._lock:
            self.users -= 1
            last = self.users <= 0
        if last:
            self.loop.call_soon_threadsafe(self._stop.set)
            self.loop.call_soon_threadsafe(self._wake.set)
            self._thread.join(timeout=10)
        return last


_SERVERS: dict[tuple[str, int], OpcUaServer] = {}
_SERVERS_LOCK = threading.Lock()


class OpcUaSink:
    needs_overlay = False

    def __init__(self, uri: str, camera: str | None, log=print):
        self.endpoint = parse_opcua_uri(uri)
        self.camera = camera or "camera0"
        self.name = uri
        with _SERVERS_LOCK:
            server = _SERVERS.get(self.endpoint)
            if server is None:
                server = _SERVERS[self.endpoint] = OpcUaServer(*self.endpoint, log=log)
            if self.camera in server.cameras:
                raise SinkError(
                    f"camera {self.camera!r} has two opcua sinks on {uri}", "give it one"
                )
            server.add_camera(self.camera)
        self.server = server
        self.frames = self.ok = self.ng = self.sequence = 0

    def write(self, event, frame, overlay) -> None:
        record = event_record(event)
        decision = record["decision"]
        self.frames += 1
        self.ng += decision == "NG"
        self.ok += decision == "OK"
        self.sequence += 1
        self.server.publish(
            self.camera,
            {
                "LastDecision": decision,
                "LastScore": float(record["score"]),
                "LastFrame": int(record["frame"]),
                "LastTime": str(record["time"]),
                "Frames": self.frames,
                "OK": self.ok,
                "NG": self.ng,
                "Sequence": self.sequence,
                "ResultReady": True,
            },
        )

    def close(self) -> None:
        with _SERVERS_LOCK:
            if self.server.release():
                _SERVERS.pop(self.endpoint, None)
