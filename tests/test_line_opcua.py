"""The OPC-UA sink against a real asyncua client: per camera the last decision, score,
counters, and a result-ready flag the PLC clears and the next result sets again."""

from __future__ import annotations

import asyncio

import pytest
from broker import free_port

from dmgrd_edge.runtime.sinks import SinkError, open_sink

asyncua = pytest.importorskip("asyncua", reason="asyncua is in the line and dev extras")


def _event(i, decision):
    return {"time": f"t{i}", "frame": i, "score": 0.25 * i, "decision": decision}


async def _read(port, camera, names):
    from asyncua import Client

    async with Client(f"opc.tcp://127.0.0.1:{port}/dmgrd/") as client:
        ns = await client.get_namespace_index("urn:dmgrd-edge:line")
        obj = await client.nodes.objects.get_child(f"{ns}:{camera}")
        return {n: await (await obj.get_child(f"{ns}:{n}")).read_value() for n in names}


async def _clear_ready(port, camera):
    from asyncua import Client, ua

    async with Client(f"opc.tcp://127.0.0.1:{port}/dmgrd/") as client:
        ns = await client.get_namespace_index("urn:dmgrd-edge:line")
        obj = await client.nodes.objects.get_child(f"{ns}:{camera}")
        node = await obj.get_child(f"{ns}:ResultReady")
        await node.write_value(ua.DataValue(ua.Variant(False, ua.VariantType.Boolean)))
        return await node.read_value()


def _until_read(port, camera, names, predicate, tries=100):
    import time

    for _ in range(tries):
        values = asyncio.run(_read(port, camera, names))
        if predicate(values):
            return values
        time.sleep(0.05)
    return values


NAMES = ["LastDecision", "LastScore", "LastFrame", "Frames", "OK", "NG", "Sequence", "ResultReady"]


def test_plc_reads_last_result_counters_and_clears_result_ready():
    port = free_port()
    left = open_sink(f"opcua://127.0.0.1:{port}", True, camera="left")
    right = open_sink(f"opcua://127.0.0.1:{port}", True, camera="right")  # one server, two
    try:
        for i in range(5):
            left.write(_event(i, "NG" if i == 3 else "OK"), None, None)
        right.write(_event(0, "NG"), None, None)
        got = _until_read(port, "left", NAMES, lambda v: v["Sequence"] == 5)
        assert got == {
            "LastDecision": "OK",
            "LastScore": 1.0,
            "LastFrame": 4,
            "Frames": 5,
            "OK": 4,
            "NG": 1,
            "Sequence": 5,
            "ResultReady": True,
        }
        assert asyncio.run(_clear_ready(port, "left")) is False  # the PLC has read it
        assert asyncio.run(_read(port, "left", ["ResultReady"]))["ResultReady"] is False
        left.write(_event(5, "NG"), None, None)
        got = _until_read(port, "left", NAMES, lambda v: v["Sequence"] == 6)
        assert (got["ResultReady"], got["LastDecision"], got["NG"]) == (True, "NG", 2)
        right_values = asyncio.run(_read(port, "right", ["LastDecision", "Frames"]))
        assert right_values == {"LastDecision": "NG", "Frames": 1}
        with pytest.raises(SinkError, match="two opcua sinks"):
            open_sink(f"opcua://127.0.0.1:{port}", True, camera="left")
    finally:
        left.close()
        right.close()


@pytest.mark.fault("source or sink URI that cannot be used")
def test_bad_opcua_uri_and_taken_port():
    with pytest.raises(SinkError, match="bad OPC-UA sink"):
        open_sink("opcua://127.0.0.1:4840/some/path", True)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SinkError, match="cannot serve OPC-UA"):
            open_sink(f"opcua://127.0.0.1:{port}", True, camera="x")
