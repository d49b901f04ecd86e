"""The pictures of `qcc report`, drawn with matplotlib as SVG text to inline in the page.

Every chart is a function of plain data (the JSON of OUTDIR) returning an `<svg>` element
without the XML prolog or namespace URLs, so the page holds no external address. Elements a
person can hover carry an `id` (matplotlib's gid) that the page's details table is keyed by.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("svg")  # no display: the charts only ever become SVG text

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib import colors  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PRECISION_KEYS = ("B_W", "B_A", "B_GW", "B_GA", "B_acc")  # seeds/001 Fig. 2, one row per layer
PRECISION_STYLE = {"B_W": ("o", "#1f77b4"), "B_A": ("s", "#ff7f0e"), "B_GW": ("^", "#2ca02c"),
                   "B_GA": ("v", "#d62728"), "B_acc": ("D", "#9467bd")}
BITS_COLORMAP = plt.get_cmap("viridis")
BITS_NORM = colors.Normalize(vmin=1, vmax=16)  # wider tensors (accumulators) share the top colour
FLOAT_COLOUR = "#d9d9d9"
SATURATED_EDGE = "#e00000"

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "qcc-report", "font.size": 9,
                     "font.family": "sans-serif"})


def bits_colour(bits: int | None) -> str:
    """The fill of a tensor of `bits` bits (None: a float tensor)."""
    if bits is None:
        return FLOAT_COLOUR
    return colors.to_hex(BITS_COLORMAP(BITS_NORM(min(bits, 16))))


def text_colour(bits: int | None) -> str:
    """Black or white, whichever reads on `bits_colour(bits)`."""
    if bits is None:
        return "black"
    r, g, b = colors.to_rgb(bits_colour(bits))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def to_svg(fig: Figure) -> str:
    """The figure as an inline <svg> element: no prolog, DOCTYPE or namespace URLs."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)  # HTML's parser knows svg and xlink
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


# -- the per-layer precision chart (seeds/001 Fig. 2) ----------------------------------------
def precision_chart(layers: list[dict], names: list[str]) -> str:
    """One line per precision present in the layers (B_W, B_A and, with --bits auto, B_GW, B_GA,
    B_acc) against the layer index; each series is the group `series-<key>`, one marker per
    layer."""
    keys = [k for k in PRECISION_KEYS if all(layer.get(k) is not None for layer in layers)]
    fig, ax = plt.subplots(figsize=(min(max(5.0, 0.55 * len(layers) + 2.5), 13.0), 3.4))
    x = list(range(1, len(layers) + 1))
    for key in keys:
        marker, colour = PRECISION_STYLE[key]
        (line,) = ax.plot(x, [layer[key] for layer in layers], marker=marker, color=colour,
                          label=key, linewidth=1.2, markersize=5)
        line.set_gid(f"series-{key}")
    ax.set_xticks(x, names, rotation=60 if len(x) > 8 else 0,
                  ha="right" if len(x) > 8 else "center", fontsize=7 if len(x) > 8 else 9)
    ax.set_xlabel("layer")
    ax.set_ylabel("bits")
    ax.set_ylim(0, max([layer[k] for layer in layers for k in keys], default=8) + 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(ncol=len(keys), loc="upper center", bbox_to_anchor=(0.5, 1.18), frameon=False)
    return to_svg(fig)


def sweep_chart(points: list[dict], target: float, chosen: int) -> str:
    """p_m against B_min with the target line; lower bounds (the sweep stopped counting once
    the target was exceeded) drawn as open triangles."""
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    exact = [p for p in points if p["exact"]]
    bounds = [p for p in points if not p["exact"]]
    ax.plot([p["B_min"] for p in exact], [100 * p["p_m"] for p in exact], "o", color="#1f77b4",
            label="p_m measured", gid="sweep-exact")
    if bounds:
        ax.plot([p["B_min"] for p in bounds], [100 * p["p_m"] for p in bounds], "^",
                mfc="none", color="#1f77b4", label="p_m at least (sweep stopped early)",
                gid="sweep-bound")
    ax.axhline(100 * target, color="#d62728", linestyle="--", label=f"target {100 * target:g} %")
    ax.axvline(chosen, color="#7f7f7f", linestyle=":", label=f"chosen B_min = {chosen}")
    ax.set_xlabel("B_min (bits)")
    ax.set_ylabel("p_m (%)")
    ax.set_xticks(sorted({p["B_min"] for p in points}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return to_svg(fig)


def flash_chart(rows: list[dict]) -> str:
    """Stacked horizontal bars: bytes of weights (constants) and code per layer."""
    fig, ax = plt.subplots(figsize=(6.0, 0.28 * len(rows) + 1.2))
    names = [r["name"] for r in rows][::-1]
    weights = [r["weight_bytes"] for r in rows][::-1]
    code = [r["code_bytes"] or 0 for r in rows][::-1]
    ax.barh(names, weights, color="#1f77b4", label="weights and constants (.rodata)")
    ax.barh(names, code, left=weights, color="#ff7f0e", label="code (.text)")
    ax.set_xlabel("bytes (Cortex-M4, -Os)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return to_svg(fig)


def arena_chart(buffers: list[dict], steps: list[str], arena: int) -> str:
    """The arena plan as a timeline: x = node step, y = byte offset, one rectangle per buffer
    (id `buffer-<i>`) over its lifetime."""
    fig, ax = plt.subplots(figsize=(min(max(5.0, 0.35 * len(steps) + 2.0), 13.0), 3.6))
    cmap = plt.get_cmap("tab20")
    for i, b in enumerate(buffers):
        rect = Rectangle((b["start"] - 0.45, b["offset"]), b["end"] - b["start"] + 0.9, b["size"],
                         facecolor=cmap(i % 20), edgecolor="black", linewidth=0.5, alpha=0.85)
        rect.set_gid(f"buffer-{i}")
        ax.add_patch(rect)
        if b["size"] > 0.06 * arena:  # room for its name
            ax.text(b["start"], b["offset"] + b["size"] / 2, b["label"][:16], fontsize=6,
                    va="center")
    ax.set_xlim(-0.6, len(steps) - 0.4)
    ax.set_ylim(0, max(arena, 1))
    ax.set_xticks(range(len(steps)), steps, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("arena offset (bytes)")
    ax.axhline(arena, color="#d62728", linestyle="--", linewidth=0.8)
    ax.grid(alpha=0.3)
    return to_svg(fig)


def alpha_chart(series: dict[str, tuple[str, list[float]]],
                stage_starts: list[tuple[int, str]]) -> str:
    """α per layer over QAT (seeds/004 eq. 7-8): x = epochs trained (0: the initial α), one
    line per quantizer, its markers in the group `<id>`; dotted lines where a --progressive
    stage moves to fewer bits. α is drawn relative to its initial value: the clipping scales of
    different layers lie an order of magnitude apart, their moves a few percent (the page's
    table holds the values)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for gid, (label, values) in series.items():
        start = values[0] or 1.0
        ax.plot(range(len(values)), [v / start for v in values], marker="o", markersize=3.5,
                linewidth=1.1, label=label, gid=gid)
    for epoch, widths in stage_starts:
        ax.axvline(epoch, color="#7f7f7f", linestyle=":", linewidth=0.8)
        ax.text(epoch, 1.0, f" {widths}", transform=ax.get_xaxis_transform(), fontsize=7,
                va="top", color="#555555")
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("α / α before training")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(series) > 6 else 1, loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False)
    return to_svg(fig)


# -- the annotated graph ---------------------------------------------------------------------
@dataclass
class Chip:
    """One tensor as drawn: a coloured label inside an op box, or an edge tensor between ops."""

    key: str  # id in the page: details are keyed by it
    text: str
    bits: int | None
    saturated: int = 0


@dataclass
class Box:
    """One op of the graph with its constant / training tensors as chips."""

    key: str
    title: str
    chips: list[Chip] = field(default_factory=list)


@dataclass
class Drawing:
    """Boxes and edge tensors by rank: the input of `graph_svg`."""

    rows: list[list[Box | Chip]]
    edges: list[tuple[str, str]]  # (from key, to key)


BOX_WIDTH = 2.9  # inches
CHIP_HEIGHT = 0.2
TITLE_HEIGHT = 0.24
ROW_GAP = 0.32
COLUMN_GAP = 0.3


def _height(item: Box | Chip) -> float:
    if isinstance(item, Chip):
        return CHIP_HEIGHT + 0.04
    return TITLE_HEIGHT + CHIP_HEIGHT * len(item.chips) + 0.08


def graph_svg(drawing: Drawing) -> str:
    """Rows top to bottom, items of a row side by side; edges from the bottom centre of one
    item to the top centre of the next. Saturated tensors get a red outline."""
    heights = [max(_height(item) for item in row) for row in drawing.rows]
    widest = max(len(row) for row in drawing.rows)
    width = widest * BOX_WIDTH + (widest - 1) * COLUMN_GAP
    total = sum(heights) + ROW_GAP * (len(heights) - 1)
    fig = plt.figure(figsize=(width + 0.1, total + 0.1))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.05, width + 0.05)
    ax.set_ylim(-total - 0.05, 0.05)
    ax.axis("off")
    anchors: dict[str, tuple[float, float, float]] = {}  # key -> (centre x, top y, bottom y)
    top = 0.0
    for row, height in zip(drawing.rows, heights):
        row_width = len(row) * BOX_WIDTH + (len(row) - 1) * COLUMN_GAP
        left = (width - row_width) / 2
        for item in row:
            h = _height(item)
            if isinstance(item, Chip):
                _draw_chip(ax, item, left + 0.35, top - h + 0.02, BOX_WIDTH - 0.7)
            else:
                _draw_box(ax, item, left, top, h)
            anchors[item.key] = (left + BOX_WIDTH / 2, top, top - h)
            left += BOX_WIDTH + COLUMN_GAP
        top -= height + ROW_GAP
    for src, dst in drawing.edges:
        if src in anchors and dst in anchors:
            x0, _, y0 = anchors[src]
            x1, y1, _ = anchors[dst]
            bend = 0.0 if abs(x0 - x1) > 1e-6 or y0 - y1 < ROW_GAP + 0.5 else 0.35
            ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=8,
                                         connectionstyle=f"arc3,rad={bend}", color="#555555",
                                         linewidth=0.8, shrinkA=0, shrinkB=0))
    return to_svg(fig)


def _draw_box(ax, box: Box, left: float, top: float, height: float) -> None:
    patch = FancyBboxPatch((left, top - height), BOX_WIDTH, height,
                           boxstyle="round,pad=0,rounding_size=0.05", facecolor="#f7f7f7",
                           edgecolor="#444444", linewidth=0.8)
    patch.set_gid(box.key)
    ax.add_patch(patch)
    ax.text(left + 0.08, top - TITLE_HEIGHT / 2 - 0.02, box.title, va="center", fontsize=8,
            fontweight="bold")
    y = top - TITLE_HEIGHT - 0.02
    for chip in box.chips:
        _draw_chip(ax, chip, left + 0.08, y - CHIP_HEIGHT + 0.02, BOX_WIDTH - 0.16)
        y -= CHIP_HEIGHT


def _draw_chip(ax, chip: Chip, left: float, bottom: float, width: float) -> None:
    patch = FancyBboxPatch((left, bottom), width, CHIP_HEIGHT - 0.03,
                           boxstyle="round,pad=0,rounding_size=0.04",
                           facecolor=bits_colour(chip.bits),
                           edgecolor=SATURATED_EDGE if chip.saturated else "none",
                           linewidth=1.6 if chip.saturated else 0)
    patch.set_gid(chip.key)
    ax.add_patch(patch)
    text = chip.text + (f"  sat {chip.saturated:,}" if chip.saturated else "")
    ax.text(left + 0.06, bottom + (CHIP_HEIGHT - 0.03) / 2, text, va="center", fontsize=7,
            color=text_colour(chip.bits), family="monospace")


def bits_legend() -> str:
    """The colour scale of bit widths, as a small horizontal bar."""
    fig, ax = plt.subplots(figsize=(4.5, 0.45))
    fig.colorbar(plt.cm.ScalarMappable(norm=BITS_NORM, cmap=BITS_COLORMAP), cax=ax,
                 orientation="horizontal", ticks=[1, 2, 4, 6, 8, 10, 12, 14, 16])
    ax.set_xlabel("bits (16 and wider share the top colour; grey: float)", fontsize=7)
    ax.tick_params(labelsize=7)
    return to_svg(fig)
