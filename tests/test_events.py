"""The event record shared by the pipeline and the sinks: the JSONL line it writes is the
one the runtime has always written (keys, order, rounding, separators)."""

from __future__ import annotations

import json

import pytest

from dmgrd_edge.runtime.events import Event, Latency
from dmgrd_edge.runtime.postprocess import Region
from dmgrd_edge.runtime.sinks import open_sink

# one line as the runtime wrote it before the record was typed (an inline dict through
# json.dumps(..., separators=(",", ":"))), with the same values as EVENT below
LINE = (
    '{"time":"2026-01-02T03:04:05.678+00:00","frame":7,"score":0.123457,"decision":"NG",'
    '"regions":[{"box":[1,2,3,4],"area":12,"peak":0.98765}],'
    '"latency_ms":{"preprocess":1.235,"inference":2.0,"postprocess":0.5}}'
)
EVENT = Event(
    time="2026-01-02T03:04:05.678+00:00",
    frame=7,
    score=0.1234567,
    decision="NG",
    regions=(Region(1, 2, 3, 4, 12, 0.987654),),
    latency_ms=Latency(preprocess=1.23456, inference=2.0, postprocess=0.5),
)


def test_jsonl_line_is_byte_compatible(tmp_path):
    assert EVENT.to_json() == LINE
    sink = open_sink(str(tmp_path / "e.jsonl"), headless=True)
    sink.write(EVENT, None, None)
    sink.close()
    assert (tmp_path / "e.jsonl").read_bytes() == (LINE + "\n").encode()


def test_judged_event():
    regions = [Region(i, 0, 1, 1, 1, 0.5) for i in range(25)]
    latency = Latency(preprocess=0.1, inference=0.2, postprocess=0.3)
    event = Event.judged(3, 0.75, False, regions, latency)
    record = json.loads(event.to_json())
    assert list(record) == ["time", "frame", "score", "decision", "regions", "latency_ms"]
    assert record["decision"] == "OK" and not event.ng and len(record["regions"]) == 20
    assert record["time"].endswith("+00:00")
    with pytest.raises(ValueError, match="decision"):
        Event(time="t", frame=0, score=0.0, decision="maybe", latency_ms=latency)
