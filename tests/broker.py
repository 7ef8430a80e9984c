"""A real MQTT broker for the tests: Debian's mosquitto on a free loopback port, and a real
paho subscriber that records what it receives."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def need_mosquitto():
    if MOSQUITTO is None:
        pytest.skip(
            "the MQTT tests need Debian's mosquitto broker (apt-get install -y mosquitto); "
            ".ci/run installs it where apt is available"
        )
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is in the line and dev extras")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:port with persistence, so a subscriber's session and its queued
    QoS 1 messages survive a restart (as on a plant broker)."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {folder}/\n"
            f"log_dest file {folder}/mosquitto.log\n" + ("user root\n" if os.geteuid() == 0 else "")
            # as root, mosquitto would run as the user "mosquitto", who cannot write here:
            # no persistence file, so no session survived a restart
        )
        self.process = None

    def start(self) -> "Broker":
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.process.wait(timeout=10)
        self.process = None


class Subscriber:
    """A paho client with a persistent session (fixed id, clean_session False) at QoS 1."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict, float, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.reconnect_delay_set(1, 2)
        self.topic = topic

        def on_connect(client, userdata, flags, reason_code, properties):
            client.subscribe(topic, qos=1)

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            self.subscribed.set()

        def on_message(client, userdata, message):
            with self.lock:
                self.messages.append(
                    (message.topic, json.loads(message.payload), time.time(), message.retain)
                )

        self.client.on_connect, self.client.on_message = on_connect, on_message
        self.client.on_subscribe = on_subscribe
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the subscriber could not subscribe"

    def on(self, topic: str) -> list[dict]:
        with self.lock:
            return [m[1] for m in self.messages if m[0] == topic]

    def wait_for(self, topic: str, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.on(topic)
            if len({m.get("seq", i) for i, m in enumerate(got)}) >= count:
                return got
            time.sleep(0.05)
        return self.on(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
