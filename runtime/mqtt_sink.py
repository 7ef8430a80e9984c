"""MQTT sink: one JSON message per decided frame, for the PLC or the plant's broker.

``mqtt://host:port/topic?qos=1&buffer=2000&camera=cam1&ng_only=0&status=TOPIC&client_id=ID``

- Each decided frame becomes ``{"camera", "frame", "time", "score", "decision", "seq"}`` on
  ``topic`` (``seq`` counts this sink's messages from 0, so a subscriber can tell a gap).
- ``status`` (default ``<topic>/status``) carries a retained ``online`` record while the sink
  is connected and a retained ``offline`` one after it closes or, as the broker's last will,
  when the process dies; warnings of the line (``warn``) go to ``<topic>/events``.
- ``write`` never blocks the inference thread: the message goes into a bounded buffer that a
  publisher thread drains. When the buffer is full the oldest message is dropped and counted
  (``stats()["dropped"]``, reported at close). At most ``inflight`` messages are handed to the
  client at a time; with QoS 1 or 2 the client keeps them until the broker acknowledges and
  sends them again after a reconnect, so a broker that restarts while the buffer holds the
  backlog loses nothing (QoS 1 may deliver a message twice; QoS 0 may lose what was on the
  wire when the connection broke).
- The connection is made in the background and remade after a loss with exponential backoff
  (``backoff_min``..``backoff_max`` seconds); reconnects are counted.

paho-mqtt is imported only when an ``mqtt://`` sink is opened (``pip install -e ".[line]"``).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dmgrd_edge.errors import ConfigError

from .sinks import SinkError


def event_record(event: Any) -> dict:
    """A frame event as the JSONL line has it (runtime/events.py), or a mapping as given."""
    return event if isinstance(event, dict) else event.to_dict()


@dataclass(frozen=True)
class MqttOptions:
    host: str
    port: int
    topic: str
    qos: int = 1
    buffer: int = 2000
    inflight: int = 20
    camera: str = "camera0"
    ng_only: bool = False
    status_topic: str = ""
    client_id: str = ""
    backoff_min: float = 0.5
    backoff_max: float = 16.0
    flush_s: float = 5.0
    keepalive: int = 30

    @property
    def events_topic(self) -> str:
        return f"{self.topic}/events"


_KNOWN = {
    "qos",
    "buffer",
    "inflight",
    "camera",
    "ng_only",
    "status",
    "client_id",
    "backoff_min",
    "backoff_max",
    "flush_s",
}


def parse_mqtt_uri(uri: str, camera: str | None = None) -> MqttOptions:
    """``mqtt://host[:port]/topic[?options]`` -> MqttOptions; every problem names the part."""
    fix = "use mqtt://host:port/topic, e.g. mqtt://127.0.0.1:1883/line/cam1/results?qos=1"
    parts = urlsplit(uri)
    if parts.scheme != "mqtt":
        raise SinkError(f"not an MQTT sink: {uri!r}", fix)
    if not parts.hostname:
        raise SinkError(f"no broker host in {uri!r}", fix)
    try:
        port = parts.port or 1883
    except ValueError:
        raise SinkError(f"bad broker port in {uri!r}", fix) from None
    topic = parts.path.lstrip("/")
    if not topic or "+" in topic or "#" in uri:
        raise SinkError(f"no topic (or a wildcard in it) in {uri!r}", fix)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise SinkError(
            f"unknown MQTT sink option(s) {', '.join(unknown)} in {uri!r}",
            f"known options: {', '.join(sorted(_KNOWN))}",
        )

    def number(key, kind, lo, default):
        if key not in query:
            return default
        try:
            value = kind(query[key])
        except ValueError:
            value = None
        if value is None or value < lo:
            raise SinkError(
                f"bad MQTT sink option {key}={query[key]!r}", f"give a {kind.__name__} >= {lo}"
            )
        return value

    qos = number("qos", int, 0, 1)
    if qos > 2:
        raise SinkError(f"bad MQTT sink option qos={qos}", "QoS is 0, 1 or 2")
    return MqttOptions(
        host=parts.hostname,
        port=port,
        topic=topic,
        qos=qos,
        buffer=number("buffer", int, 1, 2000),
        inflight=number("inflight", int, 1, 20),
        camera=query.get("camera") or camera or "camera0",
        ng_only=query.get("ng_only", "0").lower() in ("1", "true", "yes"),
        status_topic=query.get("status") or f"{topic}/status",
        client_id=query.get("client_id", ""),
        backoff_min=number("backoff_min", float, 0.01, 0.5),
        backoff_max=number("backoff_max", float, 0.01, 16.0),
        flush_s=number("flush_s", float, 0.0, 5.0),
    )


def _import_paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise ConfigError(
            "the MQTT sink needs the paho-mqtt package, which is not installed",
            'pip install -e ".[line]" (or pip install paho-mqtt)',
        ) from exc
    return mqtt


class MqttSink:
    needs_overlay = False

    def __init__(self, options: MqttOptions, log=print):
        mqtt = _import_paho()
        self.options, self.log = options, log
        self.name = f"mqtt://{options.host}:{options.port}/{options.topic}"
        self._pending: collections.deque = collections.deque()
        self._inflight: dict[int, int] = {}  # message id -> seq, handed to the client
        self._acked_early: set[int] = set()
        self._handing = 0  # messages being handed to the client right now
        self._cond = threading.Condition()
        self._connected = False
        self._closing = False
        self._seq = 0
        self.counters = {"queued": 0, "published": 0, "dropped": 0, "reconnects": 0, "connects": 0}
        self._max_pending = 0
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            clean_session=True,
        )
        client.max_inflight_messages_set(options.inflight)
        client.reconnect_delay_set(
            min_delay=options.backoff_min, max_delay=max(options.backoff_min, options.backoff_max)
        )
        client.will_set(options.status_topic, self._status("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self._publisher = threading.Thread(
            target=self._publish_loop, name="dmgrd-mqtt", daemon=True
        )
        self._connector = threading.Thread(
            target=self._connect_loop, name="dmgrd-mqtt-connect", daemon=True
        )
        self._connector.start()
        self._publisher.start()

    # -- the client's callbacks (its network thread) ------------------------------------
    def _status(self, state: str) -> str:
        return json.dumps(
            {"camera": self.options.camera, "state": state, "time": time.time(), **self.counters},
            separators=(",", ":"),
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self.log(f"mqtt: {self.name} refused the connection: {reason_code}")
            return
        with self._cond:
            self.counters["connects"] += 1
            if self.counters["connects"] > 1:
                self.counters["reconnects"] += 1
            self._connected = True
            self._cond.notify_all()
        client.publish(self.options.status_topic, self._status("online"), qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        with self._cond:
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._closing:
            self.log(f"mqtt: lost {self.name} ({reason_code}); reconnecting with backoff")

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self._cond:
            if self._inflight.pop(mid, None) is not None:
                self.counters["published"] += 1
            elif self._handing:  # a data message whose publish() has not returned yet
                self._acked_early.add(mid)
            self._cond.notify_all()

    # -- threads ---------------------------------------------------------------------------
    def _connect_loop(self) -> None:
        """First connection, retried with backoff until it works (the client's own loop then
        keeps it, reconnecting with its backoff)."""
        delay = self.options.backoff_min
        while not self._closing:
            try:
                self.client.connect(self.options.host, self.options.port, self.options.keepalive)
                break
            except OSError as exc:
                self.log(f"mqtt: cannot reach {self.name} ({exc}); retrying in {delay:.1f} s")
                if self._wait_closing(delay):
                    return
                delay = min(delay * 2, self.options.backoff_max)
        if not self._closing:
            self.client.loop_start()

    def _wait_closing(self, seconds: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._closing, timeout=seconds)

    def _publish_loop(self) -> None:
        """Hands buffered messages to the client, at most ``inflight`` unacknowledged at a
        time. The client is called outside this sink's lock: its network thread holds its own
        lock while it reports an acknowledgement (``_on_publish``), which takes this one."""
        qos = self.options.qos
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._closing
                        or (
                            self._connected
                            and self._pending
                            and len(self._inflight) + self._handing < self.options.inflight
                        )
                    )
                )
                if self._closing:
                    return
                seq, payload = self._pending.popleft()
                self._handing += 1
            info = self.client.publish(self.options.topic, payload, qos=qos)
            with self._cond:
                self._handing -= 1
                if qos == 0 and info.rc != 0:
                    self._pending.appendleft((seq, payload))  # not sent: wait for the connection
                    self._cond.wait(timeout=0.1)
                    continue
                if info.mid in self._acked_early:  # acknowledged before it was filed here
                    self._acked_early.discard(info.mid)
                    self.counters["published"] += 1
                else:
                    self._inflight[info.mid] = seq
                self._cond.notify_all()

    # -- the sink interface (the inference side; never blocks on the network) ------------
    def _enqueue(self, payload: dict) -> None:
        with self._cond:
            payload["seq"] = self._seq
            self._seq += 1
            # the buffer holds what waits here and what the client has not had acknowledged
            while len(self._pending) + len(self._inflight) >= self.options.buffer and self._pending:
                self._pending.popleft()
                self.counters["dropped"] += 1
            if len(self._pending) + len(self._inflight) >= self.options.buffer:
                self.counters["dropped"] += 1  # every slot is in flight: the newest goes
            else:
                self._pending.append((payload["seq"], json.dumps(payload, separators=(",", ":"))))
                self.counters["queued"] += 1
            self._max_pending = max(self._max_pending, len(self._pending) + len(self._inflight))
            self._cond.notify_all()

    def write(self, event, frame, overlay) -> None:
        record = event_record(event)
        if self.options.ng_only and record["decision"] != "NG":
            return
        self._enqueue(
            {
                "camera": self.options.camera,
                **{key: record[key] for key in ("frame", "time", "score", "decision")},
            }
        )

    def warn(self, record: dict) -> None:
        """A line warning (an implausible NG rate, drift) on ``<topic>/events``, retained so a
        dashboard that connects later sees the last one."""
        payload = json.dumps({"camera": self.options.camera, **record}, separators=(",", ":"))
        if self._connected:  # outside the lock (see _publish_loop); lost if not connected
            self.client.publish(self.options.events_topic, payload, qos=1, retain=True)

    def stats(self) -> dict:
        with self._cond:
            return {
                **self.counters,
                "unsent": len(self._pending) + len(self._inflight),
                "buffer": self.options.buffer,
                "max_buffered": self._max_pending,
            }

    def close(self) -> None:
        """Waits up to ``flush_s`` for the buffer to drain, publishes the retained offline
        status, disconnects; says what was dropped or left unsent."""
        deadline = time.monotonic() + self.options.flush_s
        with self._cond:
            self._cond.wait_for(
                lambda: not (self._pending or self._inflight),
                timeout=max(0.0, deadline - time.monotonic()),
            )
            connected = self._connected
            self._closing = True
            self._cond.notify_all()
        self._publisher.join(timeout=2)
        if connected:
            info = self.client.publish(
                self.options.status_topic, self._status("offline"), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self._connector.join(timeout=2)
        s = self.stats()
        if s["dropped"] or s["unsent"]:
            self.log(
                f"warning: mqtt {self.name}: {s['dropped']} message(s) dropped (buffer of "
                f"{s['buffer']} full) and {s['unsent']} unsent at close, of {self._seq}"
            )
        else:
            self.log(f"mqtt {self.name}: {s['published']} message(s) published")
