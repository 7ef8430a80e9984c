"""What `dmgrd-edge run` opens before the stream starts, in the order that reports a wrong
source or sink before the model loads, and closes what it opened when a later step fails."""

from __future__ import annotations

from dmgrd_edge.bundle import Bundle
from dmgrd_edge.options import BackendRequest

from .select import Selection, create_backend
from .sinks import Sink, open_sink
from .sources import Source, SourceSpec, open_source

DEFAULT_RECORDING_FPS = 25.0  # a recording's rate when the source does not tell its own


def open_run(
    bundle: Bundle,
    spec: SourceSpec,
    sink_uris: list[str],
    headless: bool,
    request: BackendRequest,
    camera: str | None = None,
    log=print,
) -> tuple[Source, list[Sink], Selection]:
    """The source (CSI frames scaled to the model's input), the sinks (a recording plays at
    the source's rate) and the backend; on any error, what was opened is closed again."""
    source = open_source(spec, (bundle.preprocess.width, bundle.preprocess.height))
    sinks: list[Sink] = []
    try:
        for uri in sink_uris:
            fps = source.fps or DEFAULT_RECORDING_FPS
            sinks.append(open_sink(uri, headless, fps=fps, camera=camera, log=log))
        # ORT pool threads stop spinning when a run returns: the gap belongs to capture and sinks
        chosen = create_backend(
            bundle,
            request.backend,
            request.precision,
            max_batch=request.max_batch,
            threads=request.threads,
            log=log,
            spin=request.spin,
            spin_between_runs=False,
            workers=request.workers,
        )
    except BaseException:
        for opened in sinks:
            opened.close()
        source.close()
        raise
    return source, sinks, chosen
