"""The trade-off report's figure (matplotlib, Agg backend; torch-free).

One row of panels per device (latencies compare only within one device), one panel per
accuracy metric: batch-1 latency (p50) against accuracy, the Pareto front of that metric
as a line, the recommended variant and the best variant within a latency budget marked.

Point labels are placed by a small search: each label takes the nearest free spot around
its point (leaving out markers, lines, other labels and their leaders) inside the panel,
with a thin leader line when it sits away from its point. Each point is labelled with its
variant's name where all names fit (in a taller figure if need be); where they do not, the
points are numbered (fastest first, the same number in every panel of a device) and a key
beside the panels names them. A set too dense even for numbers is an error naming the fix.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import DataError

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure

    from .tradeoff import Variant

PANEL_IN = (7.0, 4.8)  # width, height of one panel in inches
DPI = 110
LABEL_PT = 9.0
MARKER_PT = 7.0
STAR_PT = 17.0  # the recommended variant
SQUARE_PT = 13.0  # the most accurate variant within the latency budget
PRECISION_COLOURS = {"fp32": "tab:blue", "fp16": "tab:green", "int8": "tab:orange"}
OTHER_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
OTHER_GAP_PX = 14.0  # the least room between a label and the markers of other points
LEADER_GAP_PX = 4.0  # a label further than this from its marker's edge gets a leader line
MIN_LEADER_PX = 12.0  # the shortest leader drawn (beyond the marker's edge)
LAYOUT_TRIES = 1  # shuffled label orders tried after the four plain ones
MAX_LEADER_PX = 90.0  # a label further from its point reads as a stranger's
CANDIDATES = 5000  # label spots considered per label, the nearest ones
KEY_LINE_IN = 0.2  # height of one line of the key, inches


@dataclass(kw_only=True)
class Panel:
    device: str
    metric: str
    ax: object  # the matplotlib Axes
    variants: list  # the variants of this device with this metric, as plotted
    labels: list  # their label Text artists, in the order of ``variants``
    leaders: list  # Line2D from a label to its point, for labels placed away from it
    markers: list  # Line2D of each point, in the order of ``variants``


def _colours(variants: list[Variant]) -> dict[str, str]:
    others = iter(OTHER_COLOURS)
    colours = {}
    for precision in sorted({v.precision for v in variants}):
        colours[precision] = PRECISION_COLOURS.get(precision) or next(others, "black")
    return colours


def short_label(v: Variant) -> str:
    """'efficientnet_lite0 pruned 50% int8-cpu': the variant without its backend and file."""
    stem = v.file.removeprefix("model.").split(".")[0]
    form = "fp32" if stem in ("onnx", "") else stem  # model.onnx is the fp32 graph
    return f"{v.label or v.backbone} {form}"


def shared_prefix(labels: list[str]) -> str:
    """The leading words all labels share, when every label keeps a word of its own."""
    words = [label.split(" ") for label in labels]
    shared = []
    for column in zip(*words):
        if len(set(column)) > 1:
            break
        shared.append(column[0])
    if any(len(w) <= len(shared) for w in words):
        shared = shared[: min(len(w) for w in words) - 1]
    return " ".join(shared)


def _y_limits(values: np.ndarray) -> tuple[float, float, list[float]]:
    """Limits with room for labels, and ticks that never pass 100 %."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 2.0)
    lo, hi = lo - 0.35 * span, min(hi + 0.35 * span, 100.0 + 0.1 * span)  # nothing above 100
    ticks = [t for t in MaxNLocator(6).tick_values(lo, hi) if lo <= t <= min(hi, 100.0)]
    return lo, hi, ticks


def _x_limits(xs: np.ndarray, budget_ms: float | None, zoom: bool) -> tuple[float, float]:
    """From 0, so that distances read as ratios (and the room left of the points takes
    names), to a little past the slowest variant or the budget. ``zoom`` (numbered points):
    the range of the data instead when all latencies sit in its upper half."""
    lo, hi = float(xs.min()), float(xs.max())
    if budget_ms is not None:
        lo, hi = min(lo, budget_ms), max(hi, budget_ms)
    if not zoom or lo <= 0.5 * hi:
        return 0.0, hi * 1.12
    span = max(hi - lo, 0.05 * hi)
    return lo - 0.15 * span, hi + 0.15 * span


def _overlaps(boxes: np.ndarray, obstacles: np.ndarray) -> np.ndarray:
    """For each candidate box (x0, y0, x1, y1), whether it meets any obstacle box."""
    if len(obstacles) == 0:
        return np.zeros(len(boxes), bool)
    b, o = boxes[:, None, :], obstacles[None, :, :]
    hit = (
        (b[..., 0] < o[..., 2])
        & (b[..., 2] > o[..., 0])
        & (b[..., 1] < o[..., 3])
        & (b[..., 3] > o[..., 1])
    )
    return hit.any(axis=1)


def _clip_hits(start: np.ndarray, end: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[n, m]: whether segment start[n] -> end[n] passes through box m (Liang-Barsky)."""
    t0 = np.zeros((len(start), len(boxes)))
    t1 = np.ones((len(start), len(boxes)))
    missed = np.zeros_like(t0, bool)
    for k in (0, 1):
        a, d = start[:, k : k + 1], (end - start)[:, k : k + 1]
        lo, hi = boxes[None, :, k], boxes[None, :, k + 2]
        flat = np.abs(d) < 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (lo - a) / d, (hi - a) / d
        t0 = np.where(flat, t0, np.maximum(t0, np.minimum(ta, tb)))
        t1 = np.where(flat, t1, np.minimum(t1, np.maximum(ta, tb)))
        missed |= flat & ((a < lo) | (a > hi))
    return (t0 <= t1) & ~missed


def _segments_cross(start: np.ndarray, end: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each segment start[n] -> end[n], whether it properly crosses any of ``others``
    (rows x0, y0, x1, y1)."""
    if len(others) == 0:
        return np.zeros(len(start), bool)

    def cross(o, a, b):  # z of (a - o) x (b - o), broadcast
        return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (
            b[..., 0] - o[..., 0]
        )

    p, q = start[:, None, :], end[:, None, :]
    r, s = others[None, :, :2], others[None, :, 2:]
    return ((cross(r, s, p) * cross(r, s, q) < 0) & (cross(p, q, r) * cross(p, q, s) < 0)).any(1)


def _box_point_gap(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[n, k]: distance from box n to point k (0 inside)."""
    dx = np.maximum(
        np.maximum(boxes[:, None, 0] - points[None, :, 0], 0),
        points[None, :, 0] - boxes[:, None, 2],
    )
    dy = np.maximum(
        np.maximum(boxes[:, None, 1] - points[None, :, 1], 0),
        points[None, :, 1] - boxes[:, None, 3],
    )
    return np.hypot(dx, dy)


def _candidate_centres(px: float, py: float, w: float, h: float, frame) -> tuple:
    """Label centres on a grid over the panel, nearest to the point first and within
    MAX_LEADER_PX of it; with the point end of each one's leader (the box's nearest point)."""
    xs = np.arange(frame.x0 + 3 + w / 2, frame.x1 - 3 - w / 2, 4.0)
    ys = np.arange(frame.y0 + 3 + h / 2, frame.y1 - 3 - h / 2, h / 3)
    cx, cy = (a.ravel() for a in np.meshgrid(xs, ys))
    near = np.stack([np.clip(px, cx - w / 2, cx + w / 2), np.clip(py, cy - h / 2, cy + h / 2)], 1)
    gap = np.hypot(near[:, 0] - px, 1.5 * (near[:, 1] - py))
    cost = gap + np.where(cx < px, 2.0, 0.0)  # a slight preference for the right
    order = np.argsort(cost, kind="stable")[:CANDIDATES]
    order = order[np.hypot(*(near[order] - (px, py)).T) <= MAX_LEADER_PX]  # no long leaders
    return cx[order], cy[order], near[order]


def _layout(
    sizes_px: np.ndarray,
    points: np.ndarray,
    radii: np.ndarray,
    frame,
    lines: np.ndarray,
    order: list[int],
) -> tuple[dict, dict]:
    """One greedy pass in ``order``: each label takes the free spot nearest its point.
    Returns (boxes, leaders) in display pixels; raises _NoRoom naming the index that found
    no spot."""
    markers = np.column_stack([points - radii[:, None], points + radii[:, None]])
    boxes: dict[int, np.ndarray] = {}
    leaders: dict[int, np.ndarray] = {}  # x0, y0, x1, y1 from the box edge to the marker edge
    for i in order:
        w, h = sizes_px[i]
        px, py = points[i]
        cx, cy, near = _candidate_centres(px, py, w, h, frame)
        cand = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        placed = np.array(list(boxes.values()), float).reshape(-1, 4)
        drawn = np.array(list(leaders.values()), float).reshape(-1, 4)
        keep_off = np.concatenate([lines, drawn])
        ok = ~_clip_hits(keep_off[:, :2], keep_off[:, 2:], cand).any(axis=0)
        # its leader, from the marker's edge, through no label and no other marker (but those
        # that overlap its own: a point almost on another cannot avoid it)
        away = near - points[i]
        radius = radii[i]
        start = points[i] + away / np.maximum(np.hypot(*away.T), 1e-9)[:, None] * radius
        apart = ~_overlaps(markers, markers[i : i + 1])
        apart[i] = False
        others = np.concatenate([placed, markers[apart]])
        ok &= ~_clip_hits(start, near, others).any(axis=1)
        # and no label right next to another point, where it would read as that point's
        ok &= (_box_point_gap(cand, points[apart]) - radii[apart] > OTHER_GAP_PX).all(axis=1)
        ok &= ~_overlaps(cand, np.concatenate([markers, placed]))
        # beside the point (level with it) or centred over or under it, a label reads as the
        # point's own; anywhere else it keeps far enough off for a leader that shows
        gap = np.hypot(*(near - points[i]).T)
        level = ((cand[:, 1] <= py) & (py <= cand[:, 3])) | (np.abs(cx - px) <= w / 4)
        ok &= level | (gap >= radius + MIN_LEADER_PX)
        uncrossed = ~_segments_cross(start, near, drawn)
        waiting = [k for k in order if k not in boxes and k != i]
        # wishes, dropped one by one where the panel is crowded: room kept around the points
        # still unlabelled, then leaders that cross no other leader
        for reserve, crossing in ((1.5 * h, False), (0.75 * h, False), (0.0, False), (0.0, True)):
            grown = markers[waiting] + np.array([-reserve, -reserve, reserve, reserve])
            wanted = ok & ~_overlaps(cand, grown)
            free = np.flatnonzero(wanted if crossing else wanted & uncrossed)
            if len(free):
                break
        if len(free) == 0:
            raise _NoRoom(i)
        j = free[0]
        boxes[i] = cand[j]
        end = near[j]
        length = gap[j]
        if length > radius + LEADER_GAP_PX or not level[j]:
            unit = (end - points[i]) / length
            leaders[i] = np.concatenate([end, points[i] + unit * radius])
    return boxes, leaders


def _orders(points: np.ndarray, first: list[int], tries: int) -> list[list[int]]:
    """Label orders to try: ``first``, then from either side and either edge, then shuffles
    (seeded, so a report is drawn the same way each time)."""
    n = len(points)
    orders = [
        first,
        sorted(range(n), key=lambda i: -points[i, 0]),
        sorted(range(n), key=lambda i: -points[i, 1]),
        sorted(range(n), key=lambda i: points[i, 1]),
    ]
    rng = np.random.default_rng(0)
    orders += [list(rng.permutation(n)) for _ in range(tries)]
    return orders


def _place_labels(
    fig: Figure,
    ax,
    texts: list[str],
    colours: list[str],
    points: np.ndarray,
    sizes: np.ndarray,
    lines: np.ndarray,
    first: list[int],
) -> tuple[list, list]:
    """Place each text near its point (display pixels): no label meets a marker, one of
    ``lines`` (rows x0, y0, x1, y1), a label or a leader, or comes close to another point's
    marker; no leader crosses a label or a marker, and leaders cross each other only where
    nothing else is left. ``sizes``: each point's largest marker, in points. Greedy passes
    in several orders; the first that places every label wins."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    radii = sizes * fig.dpi / 72 / 2 + 1.5
    sizes_px = []
    for text in texts:
        probe = ax.text(0, 0, text, fontsize=LABEL_PT)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        sizes_px.append((extent.width + 3, extent.height + 3))  # a pixel or so of air around
    stuck = None
    for order in _orders(points, first, LAYOUT_TRIES):
        try:
            boxes, leaders = _layout(np.array(sizes_px), points, radii, frame, lines, order)
            break
        except _NoRoom as exc:
            stuck = stuck if stuck is not None else exc.args[0]
    else:
        raise _NoRoom(texts[stuck])
    to_data = ax.transData.inverted()
    labels, drawn = [], []
    for i in range(len(texts)):
        x0, y0, x1, y1 = boxes[i]
        centre = to_data.transform([((x0 + x1) / 2, (y0 + y1) / 2)])[0]
        labels.append(
            ax.text(
                centre[0],
                centre[1],
                texts[i],
                ha="center",
                va="center",
                fontsize=LABEL_PT,
                color=colours[i],
                zorder=4,
            )
        )
        if i in leaders:
            a, b = to_data.transform(leaders[i].reshape(2, 2))
            drawn += ax.plot(
                [a[0], b[0]], [a[1], b[1]], color=colours[i], alpha=0.6, lw=0.8, zorder=2
            )
    return labels, drawn


class _NoRoom(Exception):
    pass


def _names_and_numbers(variants: list[Variant], devices: list[str]):
    """The names of the points (without what every variant shares), the numbers they get
    in a key (fastest first per device), and the shared prefix."""
    prefix = shared_prefix([short_label(v) for v in variants])
    names = {
        id(v): short_label(v)[len(prefix) :].strip() if prefix else short_label(v) for v in variants
    }
    numbers = {}
    for device in devices:
        mine = sorted((v for v in variants if v.device == device), key=lambda v: v.ms_b1_p50)
        numbers.update({id(v): k + 1 for k, v in enumerate(mine)})
    return names, numbers, prefix


def _make_figure(variants, devices, metrics, prefix: str, height_scale: float, numbered: bool):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no GUI, no global backend
    from matplotlib.figure import Figure

    row_in = PANEL_IN[1] * height_scale
    if numbered:  # the key lists every variant of the device
        most = max(sum(v.device == d for v in variants) for d in devices)
        row_in = max(row_in, KEY_LINE_IN * most + 1.2)
    widths = [1.0] * len(metrics) + ([0.8] if numbered else [])
    fig = Figure(
        figsize=(PANEL_IN[0] * sum(widths), row_in * len(devices) + 0.9),
        dpi=DPI,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = np.array(
        fig.subplots(len(devices), len(widths), squeeze=False, gridspec_kw={"width_ratios": widths})
    )
    title = (
        "Latency / accuracy trade-off (one row per device: latencies compare only within a device)"
    )
    if prefix:
        title += f"\nall variants: {prefix} (left out of the names)"
    fig.suptitle(title, fontsize=12)
    return fig, axes


def _label_panel(fig, entry, budget_ms, texts_of, colours) -> Panel:
    """Labels of one drawn panel, placed in its final pixels."""
    ax, device, metric, scored, xs, ys, front, on_front, markers, sizes = entry
    points = ax.transData.transform(np.column_stack([xs, ys]))
    front_line = points[on_front]
    lines = [np.column_stack([front_line[:-1], front_line[1:]])]
    frame = ax.get_window_extent()
    if budget_ms is not None:
        bx = ax.transData.transform([(budget_ms, 0)])[0, 0]
        lines.append(np.array([[bx, frame.y0, bx, frame.y1]]))
    first = sorted(range(len(scored)), key=lambda i: (not front[i], xs[i]))
    labels, leaders = _place_labels(
        fig,
        ax,
        [texts_of(v) for v in scored],
        [colours[v.precision] for v in scored],
        points,
        sizes,
        np.concatenate(lines),
        first,
    )
    return Panel(
        device=device,
        metric=metric,
        ax=ax,
        variants=scored,
        labels=labels,
        leaders=leaders,
        markers=markers,
    )


def build_figure(
    variants: list[Variant],
    metrics: tuple[str, ...],
    picks: dict,
    budget_ms: float | None,
    budget_picks: dict,
    rec_text: str,
    height_scale: float = 1.0,
    numbered: bool = False,
) -> tuple[Figure, list[Panel]]:
    """The figure (not yet saved) and its panels, for tests to inspect. ``numbered``: label
    the points with numbers and add a key per device."""
    from .tradeoff import METRICS, pareto_flags

    devices = sorted({v.device for v in variants})
    colours = _colours(variants)
    names, numbers, prefix = _names_and_numbers(variants, devices)
    fig, axes = _make_figure(variants, devices, metrics, prefix, height_scale, numbered)
    marks = _Marks(
        picks=picks,
        budget_ms=budget_ms,
        budget_picks=budget_picks,
        metric_names=METRICS,
        pareto_flags=pareto_flags,
        zoom=numbered,
    )
    todo = []
    for r, device in enumerate(devices):
        mine = [v for v in variants if v.device == device]
        for c, metric in enumerate(metrics):
            entry = _draw_panel(axes[r, c], device, metric, mine, colours, marks)
            if entry is not None:
                todo.append(entry)
        if numbered:
            by_speed = sorted(mine, key=lambda v: v.ms_b1_p50)
            _draw_key(axes[r, -1], device, by_speed, names, numbers, colours)
    fig.legend(
        handles=_legend(colours, rec_text, budget_ms),
        loc="outside lower center",
        ncol=4,
        fontsize=9.5,
        frameon=False,
    )
    fig.canvas.draw()  # fixes the layout; labels are placed in the panels' final pixels
    fig.set_layout_engine("none")

    def texts_of(v) -> str:
        return str(numbers[id(v)]) if numbered else names[id(v)]

    return fig, [_label_panel(fig, entry, budget_ms, texts_of, colours) for entry in todo]


@dataclass(frozen=True, kw_only=True)
class _Marks:
    """What every panel marks: the recommended pick, the budget and its pick, the metric
    names, the front rule, and whether the x axis zooms (numbered labels)."""

    picks: dict
    budget_ms: float | None
    budget_picks: dict
    metric_names: dict
    pareto_flags: Callable
    zoom: bool


def _no_metric(ax, name: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"no {name} in these results\n(run bench with --data)",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        color="tab:red",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _mark_picks(ax, device, metric, scored, xs, ys, sizes, marks: _Marks) -> None:
    """The star on the recommended variant, the budget line and the square on its pick."""
    pick = marks.picks.get(device)
    if pick in scored:
        i = scored.index(pick)
        ax.plot(xs[i], ys[i], "*", ms=STAR_PT, mfc="none", mec="black", mew=1.3, zorder=5)
        sizes[i] = STAR_PT * 0.8  # the star's arms leave room between them
    budget_ms = marks.budget_ms
    if budget_ms is None:
        return
    ax.axvline(budget_ms, color="tab:red", ls="--", lw=1.1, zorder=1)
    inside = marks.budget_picks.get(device)
    if inside in scored:
        i = scored.index(inside)
        ax.plot(xs[i], ys[i], "s", ms=SQUARE_PT, mfc="none", mec="tab:red", mew=1.3, zorder=5)
        sizes[i] = max(sizes[i], SQUARE_PT * 1.1)
    else:
        ax.set_title(
            f"{device}: {marks.metric_names[metric]} vs latency; none within {budget_ms:g} ms",
            fontsize=10.5,
        )


def _draw_panel(ax, device, metric, mine, colours, marks: _Marks):
    """Axes, points, front and marks of one panel; what label placement needs, or None
    for a panel without that metric."""
    name = marks.metric_names[metric]
    ax.set_title(f"{device}: {name} vs latency", fontsize=10.5)
    ax.set_xlabel("latency per image, batch 1, p50 (ms)", fontsize=10)
    ax.set_ylabel(f"{name} (%)", fontsize=10)
    ax.tick_params(labelsize=9.5)
    ax.grid(True, color="0.9", lw=0.8)
    scored = [v for v in mine if getattr(v, metric) is not None]
    if not scored:
        _no_metric(ax, name)
        return None
    xs = np.array([v.ms_b1_p50 for v in scored])
    ys = np.array([100 * getattr(v, metric) for v in scored])
    front = marks.pareto_flags(scored, metric)
    ax.set_xlim(*_x_limits(xs, marks.budget_ms, marks.zoom))
    lo, hi, ticks = _y_limits(ys)
    ax.set_ylim(lo, hi)
    ax.set_yticks(ticks)
    ax.yaxis.set_major_formatter("{x:.1f}")
    on_front = sorted((i for i in range(len(scored)) if front[i]), key=lambda i: xs[i])
    ax.plot(xs[on_front], ys[on_front], color="0.35", lw=1.4, zorder=2)
    markers = []
    for i, v in enumerate(scored):
        colour = colours[v.precision]
        markers += ax.plot(
            xs[i],
            ys[i],
            "o",
            ms=MARKER_PT,
            color=colour,
            zorder=3,
            mfc=colour if front[i] else "white",
            mew=1.6,
        )
    sizes = np.full(len(scored), MARKER_PT)
    _mark_picks(ax, device, metric, scored, xs, ys, sizes, marks)
    return ax, device, metric, scored, xs, ys, front, on_front, markers, sizes


def _draw_key(ax, device: str, mine: list, names: dict, numbers: dict, colours: dict) -> None:
    """The numbers' names, fastest first, in the colour of their precision."""
    ax.set_axis_off()
    ax.set_title(f"{device}: key", fontsize=10.5)
    step = 1.0 / max(len(mine), 1)
    step = min(step, KEY_LINE_IN / (ax.get_position().height * ax.figure.get_figheight()))
    for k, v in enumerate(mine):
        ax.text(
            0.0,
            1.0 - (k + 0.5) * step,
            f"{numbers[id(v)]:>2}  {names[id(v)]}",
            transform=ax.transAxes,
            ha="left",
            va="center",
            fontsize=LABEL_PT,
            color=colours[v.precision],
            family="monospace",
        )


def _legend(colours: dict, rec_text: str, budget_ms: float | None) -> list:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", ms=MARKER_PT, color=col, label=p)
        for p, col in colours.items()
    ]
    handles += [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            ms=MARKER_PT,
            mfc="white",
            mec="0.3",
            mew=1.6,
            label="dominated (hollow)",
        ),
        Line2D([], [], color="0.35", lw=1.4, label="Pareto front (filled points)"),
        Line2D(
            [], [], ls="", marker="*", ms=STAR_PT * 0.8, mfc="none", mec="black", label=rec_text
        ),
    ]
    if budget_ms is not None:
        handles += [
            Line2D([], [], color="tab:red", ls="--", label=f"latency budget {budget_ms:g} ms"),
            Line2D(
                [],
                [],
                ls="",
                marker="s",
                ms=SQUARE_PT * 0.8,
                mfc="none",
                mec="tab:red",
                label="most accurate within the budget",
            ),
        ]
    return handles


ATTEMPTS = ((False, 1.0), (False, 1.6), (True, 1.0), (True, 1.6))  # (numbered, height scale)


def render(
    variants: list[Variant],
    metrics: tuple[str, ...],
    picks: dict,
    budget_ms: float | None,
    budget_picks: dict,
    rec_text: str,
) -> bytes:
    """The PNG bytes: names at the points where they fit (in a taller figure if need be),
    else numbers and a key; an error if not even numbers fit."""
    for numbered, scale in ATTEMPTS:
        try:
            fig, _ = build_figure(
                variants, metrics, picks, budget_ms, budget_picks, rec_text, scale, numbered
            )
        except _NoRoom as exc:
            crowded = str(exc)
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()
    raise DataError(
        f"too many variants on one device to label the plot legibly (no room for "
        f"{crowded!r} even as a number)",
        "report fewer bench results at a time (e.g. one backbone or precision)",
    )
