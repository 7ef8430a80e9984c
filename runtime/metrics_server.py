"""A Prometheus endpoint for the line (``--metrics HOST:PORT``, off unless given).

Values are read from each camera's statistics when Prometheus scrapes, so the per-frame path
pays nothing for the endpoint. Per camera (label ``camera``):

- ``dmgrd_frames_total``, ``dmgrd_ng_total`` (counters): decided frames, NG among them;
  ``dmgrd_ng_rate`` (NG / decided) and ``dmgrd_fps`` (decided frames per second);
- ``dmgrd_latency_ms`` per ``stage`` and ``quantile`` (0.5, 0.9, 0.99; runtime/stats.py);
- ``dmgrd_captured_total``, ``dmgrd_dropped_total``, ``dmgrd_corrupt_total``,
  ``dmgrd_reconnects_total`` (capture), ``dmgrd_source_lost`` (1 once given up);
- ``dmgrd_sink_dropped_total`` and ``dmgrd_sink_unsent`` per ``sink`` with a buffer (MQTT);
- ``dmgrd_threshold`` and ``dmgrd_threshold_fits_source`` (1 if calibrated on frames of
  this source kind); ``dmgrd_drift_psi`` and ``dmgrd_drift_warning`` (1 while it warns);
  ``dmgrd_warnings_total`` per ``kind`` of warning.

Bound to 127.0.0.1 unless another address is given. prometheus-client is imported only
when the endpoint is asked for (``pip install -e ".[line]"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dmgrd_edge.errors import ConfigError

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class CameraView:
    """What the endpoint reads of one camera: its pipeline (stats, sinks, threshold), its
    capture (counters) and its watch (warnings, drift)."""

    name: str
    pipeline: object
    capture: object
    watch: object | None = None


def parse_address(
    text: str, what: str = "metrics", example: str = "127.0.0.1:9108"
) -> tuple[str, int]:
    """``PORT``, ``:PORT`` or ``HOST:PORT`` -> (host, port); the host defaults to 127.0.0.1."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = "", text
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(
            f"bad {what} address {text!r}",
            f"give HOST:PORT or PORT, e.g. {example} (0 picks a free port)",
        )
    return host or "127.0.0.1", number


class LineMetrics:
    def __init__(self, address: str, log=print):
        try:
            from prometheus_client import CollectorRegistry
        except ImportError as exc:
            raise ConfigError(
                "the metrics endpoint needs the prometheus-client package, which is not installed",
                'pip install -e ".[line]" (or pip install prometheus-client)',
            ) from exc
        self.host, self.port = parse_address(address)
        self.log = log
        self.cameras: list[CameraView] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.server = None

    def add(self, view: CameraView) -> None:
        self.cameras.append(view)

    def start(self) -> "LineMetrics":
        from prometheus_client import start_http_server

        try:
            self.server, self._thread = start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}",
                "give a free port with --metrics (or metrics = ... in the line configuration)",
            ) from exc
        self.port = self.server.server_address[1]
        self.log(f"metrics: http://{self.host}:{self.port}/metrics")
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # the collector interface of prometheus-client
    def describe(self):
        return []

    def collect(self):
        families = _families()
        for view in self.cameras:
            _add_camera(families, view)
            if view.watch is not None:
                _add_watch(families, view.name, view.watch)
        yield from families.values()


CAPTURE_COUNTERS = ("captured", "dropped", "corrupt", "reconnects")


def _families() -> dict:
    """The metric families, empty, in the order the endpoint lists them."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def counter(name, doc, labels=("camera",)):
        return CounterMetricFamily(name, doc, labels=list(labels))

    def gauge(name, doc, labels=("camera",)):
        return GaugeMetricFamily(name, doc, labels=list(labels))

    families = {
        "frames": counter("dmgrd_frames", "decided frames"),
        "ng": counter("dmgrd_ng", "frames decided NG"),
        "ng_rate": gauge("dmgrd_ng_rate", "share of decided frames that were NG"),
        "fps": gauge("dmgrd_fps", "decided frames per second"),
        "latency": gauge(
            "dmgrd_latency_ms", "latency quantiles per stage", ("camera", "stage", "quantile")
        ),
    }
    for key in CAPTURE_COUNTERS:
        families[key] = counter(f"dmgrd_{key}", f"capture: {key}")
    families["sink_dropped"] = counter(
        "dmgrd_sink_dropped", "messages a sink's full buffer dropped", ("camera", "sink")
    )
    families["sink_unsent"] = gauge(
        "dmgrd_sink_unsent", "messages waiting in a sink", ("camera", "sink")
    )
    families["threshold"] = gauge("dmgrd_threshold", "decision threshold in use")
    families["fits"] = gauge(
        "dmgrd_threshold_fits_source", "1 if calibrated on frames of this source kind"
    )
    families["drift"] = gauge("dmgrd_drift_psi", "PSI of the recent scores against the reference")
    families["drifting"] = gauge("dmgrd_drift_warning", "1 while the drift watch warns")
    families["warnings"] = counter("dmgrd_warnings", "warnings raised", ("camera", "kind"))
    families["lost"] = gauge("dmgrd_source_lost", "1 once the camera was given up")
    return families


def _add_camera(families: dict, view: CameraView) -> None:
    """One camera's statistics, capture counters, sink buffers and threshold."""
    name, stats = view.name, view.pipeline.stats
    families["frames"].add_metric([name], stats.frames)
    families["ng"].add_metric([name], stats.ng)
    families["ng_rate"].add_metric([name], stats.ng / stats.frames if stats.frames else 0.0)
    families["fps"].add_metric([name], stats.fps)
    for stage, sketch in list(stats.sketches.items()):
        if sketch.count:
            for q, value in zip(QUANTILES, sketch.quantiles(QUANTILES)):
                families["latency"].add_metric([name, stage, str(q)], value)
    c = view.capture.counters
    for key in CAPTURE_COUNTERS:
        families[key].add_metric([name], getattr(c, key))
    for sink in view.pipeline.sinks:
        if hasattr(sink, "stats"):
            s = sink.stats()
            families["sink_dropped"].add_metric([name, sink.name], s["dropped"])
            families["sink_unsent"].add_metric([name, sink.name], s["unsent"])
    families["threshold"].add_metric([name], view.pipeline.config.threshold)
    families["lost"].add_metric([name], 1.0 if view.capture.fatal else 0.0)


def _add_watch(families: dict, name: str, watch) -> None:
    """One camera's threshold origin, warnings per kind and drift."""
    families["fits"].add_metric([name], 1.0 if watch.origin.fits_source else 0.0)
    kinds = {}
    for record in list(watch.alerts.raised):
        kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
    for kind in dict.fromkeys(("implausible_ng_rate", "score_drift", *kinds)):
        families["warnings"].add_metric([name, kind], kinds.get(kind, 0))
    if watch.drift is not None:
        value = watch.drift.value
        families["drift"].add_metric([name], value if math.isfinite(value) else math.nan)
        families["drifting"].add_metric([name], 1.0 if watch.drift.active else 0.0)
