"""The MQTT sink against a real broker (Debian's mosquitto, started here on loopback) and a
real paho subscriber: every decided frame arrives, the status topic is retained, a broker
restart within the buffer loses nothing, a full buffer drops the oldest and says so."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from broker import Broker, Subscriber, need_mosquitto

from dmgrd_edge.runtime.mqtt_sink import MqttSink, parse_mqtt_uri
from dmgrd_edge.runtime.sinks import SinkError, open_sink


def test_parse_mqtt_uri():
    o = parse_mqtt_uri("mqtt://127.0.0.1:1999/line/cam1/results?qos=2&buffer=50&camera=left")
    assert (o.host, o.port, o.topic, o.qos, o.buffer, o.camera) == (
        "127.0.0.1",
        1999,
        "line/cam1/results",
        2,
        50,
        "left",
    )
    assert o.status_topic == "line/cam1/results/status"
    assert parse_mqtt_uri("mqtt://broker/t", camera="c7").camera == "c7"
    assert parse_mqtt_uri("mqtt://broker/t").port == 1883


@pytest.mark.fault("source or sink URI that cannot be used")
@pytest.mark.parametrize(
    "uri, needle",
    [
        ("mqtt:///topic", "no broker host"),
        ("mqtt://h:99999/t", "bad broker port"),
        ("mqtt://h:1883/", "no topic"),
        ("mqtt://h/a/#", "wildcard"),
        ("mqtt://h/t?qos=3", "QoS is 0, 1 or 2"),
        ("mqtt://h/t?buffer=0", "buffer"),
        ("mqtt://h/t?qso=1", "unknown MQTT sink option"),
    ],
)
def test_parse_mqtt_uri_errors(uri, needle):
    with pytest.raises(SinkError, match=needle):
        parse_mqtt_uri(uri)


@pytest.fixture
def broker(tmp_path):
    need_mosquitto()
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def _event(i):
    return {
        "time": f"2024-01-01T00:00:{i % 60:02d}.000+00:00",
        "frame": i,
        "score": 0.5 + i / 1000,
        "decision": "NG" if i % 5 == 0 else "OK",
        "regions": [],
    }


def _sink(port, topic="line/cam1", **query):
    q = "&".join(f"{k}={v}" for k, v in {"camera": "cam1", "backoff_min": 0.1, **query}.items())
    logs = []
    return MqttSink(parse_mqtt_uri(f"mqtt://127.0.0.1:{port}/{topic}?{q}"), log=logs.append), logs


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_every_frame_arrives_with_its_fields_and_a_retained_status(broker):
    sub = Subscriber(broker.port, "line/cam1/#")
    sink, logs = _sink(broker.port)
    try:
        for i in range(60):
            sink.write(_event(i), None, None)
        got = sub.wait_for("line/cam1", 60)
    finally:
        sink.close()
    assert [m["frame"] for m in got] == list(range(60))
    assert [m["seq"] for m in got] == list(range(60))
    assert got[5] == {
        "camera": "cam1",
        "frame": 5,
        "time": "2024-01-01T00:00:05.000+00:00",
        "score": 0.505,
        "decision": "NG",
        "seq": 5,
    }
    assert sink.stats()["published"] == 60 and sink.stats()["dropped"] == 0
    assert _wait(lambda: [m["state"] for m in sub.on("line/cam1/status")][-1:] == ["offline"])
    sub.close()
    # retained: a client that connects afterwards is told the last status at once
    late = Subscriber(broker.port, "line/cam1/status", client_id="late")
    assert _wait(lambda: late.on("line/cam1/status"))
    assert late.on("line/cam1/status")[-1]["state"] == "offline"
    assert late.on("line/cam1/status")[-1]["published"] == 60
    late.close()


@pytest.mark.fault("MQTT broker down")
def test_broker_restart_within_the_buffer_loses_nothing(broker):
    sub = Subscriber(broker.port, "line/cam1")
    sink, logs = _sink(broker.port, buffer=500)
    try:
        for i in range(30):
            sink.write(_event(i), None, None)
        assert _wait(lambda: sink.stats()["published"] == 30)
        broker.stop()
        for i in range(30, 130):  # the broker is gone: these wait in the buffer; write never blocks
            sink.write(_event(i), None, None)
        assert sink.stats()["unsent"] == 100
        broker.start()
        got = sub.wait_for("line/cam1", 130, timeout=30)
        assert sorted({m["seq"] for m in got}) == list(range(130))  # QoS 1: maybe twice, never lost
        assert sink.stats()["reconnects"] >= 1 and sink.stats()["dropped"] == 0
        assert any("lost" in line for line in logs)
    finally:
        sink.close()
        sub.close()


@pytest.mark.fault("MQTT broker down")
def test_a_full_buffer_drops_the_oldest_counts_and_reports_it(tmp_path):
    need_mosquitto()
    b = Broker(tmp_path)  # not started yet: the sink cannot connect
    sink, logs = _sink(b.port, buffer=10)
    try:
        for i in range(25):
            sink.write(_event(i), None, None)
        s = sink.stats()
        assert (s["dropped"], s["unsent"], s["published"]) == (15, 10, 0)
        b.start()
        sub = Subscriber(b.port, "line/cam1")
        # the subscriber came after the sink's first messages may have gone out: wait for all
        assert _wait(lambda: sink.stats()["published"] == 10)
    finally:
        sink.close()
        b.stop()
    assert any("15 message(s) dropped" in line for line in logs)
    sub.close()


def test_open_sink_takes_mqtt_and_ng_only(broker):
    sub = Subscriber(broker.port, "line/ng")
    sink = open_sink(
        f"mqtt://127.0.0.1:{broker.port}/line/ng?ng_only=1", headless=True, camera="cam9"
    )
    for i in range(20):
        sink.write(_event(i), None, None)
    sink.close()
    got = sub.wait_for("line/ng", 4)
    assert [m["frame"] for m in got] == [0, 5, 10, 15] and {m["camera"] for m in got} == {"cam9"}
    sub.close()


def test_run_publishes_every_decided_frame(broker, tmp_path, fp32_bundle):
    """`dmgrd-edge run` (torch unimportable) with a JSONL and an MQTT sink: the subscriber gets
    one message per decided frame, with the decision and score of the JSONL line."""
    from test_runtime import write_video

    video = tmp_path / "line.avi"
    write_video(video, 30)
    sub = Subscriber(broker.port, "plant/cam1")
    events = tmp_path / "events.jsonl"
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "sys.argv = ['dmgrd-edge'] + sys.argv[1:]\nfrom dmgrd_edge.cli import main\nmain()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", str(fp32_bundle), "--source", str(video)]
        + ["--sink", str(events), "--headless", "--workers", "1"]
        + ["--sink", f"mqtt://127.0.0.1:{broker.port}/plant/cam1?camera=cam1&qos=1"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    got = sub.wait_for("plant/cam1", len(lines))
    sub.close()
    assert len(lines) == 30
    assert [(m["frame"], m["decision"], m["score"]) for m in got] == [
        (e["frame"], e["decision"], e["score"]) for e in lines
    ]
    assert "30 message(s) published" in proc.stdout + proc.stderr
