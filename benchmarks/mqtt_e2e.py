"""MQTT end to end on loopback: the runtime's MQTT sink publishing one message per decided
frame at a camera's rate to Debian's mosquitto, a paho subscriber receiving them: messages
received per message sent, latency from the sink's ``write`` (the decision) to receipt
(p50/p99), and what a broker restart in the middle loses (the broker is stopped for
``--outage`` seconds while frames keep being decided, then started again).

    python benchmarks/mqtt_e2e.py --rate 30 --seconds 20 --outage 3

Needs mosquitto on the PATH (or /usr/sbin) and paho-mqtt. Torch is not imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from dmgrd_edge.runtime.device_info import device_info
from dmgrd_edge.runtime.mqtt_sink import MqttSink, parse_mqtt_uri

from dmgrd_edge.report import write_result


def start_broker(folder: Path, port: int):
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {folder}/\n" + ("user root\n" if os.geteuid() == 0 else "")
        # as root, mosquitto would run as the user "mosquitto", who cannot write here
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=30.0, help="decided frames per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--outage", type=float, default=3.0, help="broker down (s), 0: none")
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--buffer", type=int, default=2000)
    parser.add_argument("--out", default="benchmarks/results/mqtt_e2e.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dmgrd-mqtt-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = start_broker(folder, port)
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    duplicates = [0]
    subscribed = threading.Event()

    def on_message(client, userdata, message):
        seq = json.loads(message.payload)["seq"]
        if seq in received:
            duplicates[0] += 1
        else:
            received[seq] = time.perf_counter()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub", clean_session=False)
    sub.on_connect = lambda c, *_: c.subscribe("bench/cam1", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = on_message
    sub.reconnect_delay_set(1, 2)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    subscribed.wait(10)
    sink = MqttSink(
        parse_mqtt_uri(
            f"mqtt://127.0.0.1:{port}/bench/cam1?qos={args.qos}&buffer={args.buffer}"
            "&camera=cam1&backoff_min=0.1&backoff_max=1"
        ),
        log=print,
    )
    time.sleep(0.5)
    n = int(args.rate * args.seconds)
    outage_from = n // 3 if args.outage else None
    outage_to = outage_from + int(args.rate * args.outage) if args.outage else None
    write_ms = []
    start = time.perf_counter()
    for i in range(n):
        due = start + i / args.rate
        time.sleep(max(0.0, due - time.perf_counter()))
        if i == outage_from:
            broker.terminate()
            broker.wait()
        if i == outage_to:
            broker = start_broker(folder, port)
        t0 = time.perf_counter()
        sent[i] = t0
        sink.write({"frame": i, "time": "", "score": 0.5, "decision": "OK"}, None, None)
        write_ms.append(1000 * (time.perf_counter() - t0))
    deadline = time.perf_counter() + 30
    while len(received) < n and time.perf_counter() < deadline:
        time.sleep(0.05)
    stats = sink.stats()
    sink.close()
    sub.disconnect()
    sub.loop_stop()
    broker.terminate()
    broker.wait()
    steady = [
        1000 * (received[i] - sent[i])
        for i in received
        if outage_from is None or i < outage_from or i > outage_to + 2 * args.rate
    ]
    result = {
        "sent": n,
        "received": len(received),
        "lost": n - len(received),
        "duplicates": duplicates[0],
        "qos": args.qos,
        "rate": args.rate,
        "outage_s": args.outage,
        "frames_during_outage": (outage_to - outage_from) if args.outage else 0,
        "latency_ms_steady": {
            "p50": float(np.percentile(steady, 50)),
            "p99": float(np.percentile(steady, 99)),
            "count": len(steady),
        },
        "write_ms": {"p50": float(np.median(write_ms)), "max": float(np.max(write_ms))},
        "sink": stats,
        "device": device_info(),
    }
    print(
        f"sent {n}, received {len(received)} (lost {n - len(received)}, duplicates "
        f"{duplicates[0]}), broker down {args.outage} s for {result['frames_during_outage']} "
        f"frames; decision->receipt p50 {result['latency_ms_steady']['p50']:.2f} ms, p99 "
        f"{result['latency_ms_steady']['p99']:.2f} ms; write() p50 "
        f"{result['write_ms']['p50']:.3f} ms, max {result['write_ms']['max']:.2f} ms; "
        f"reconnects {stats['reconnects']}"
    )
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
