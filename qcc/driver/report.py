"""`qcc report OUTDIR`: the compiled folder as one self-contained HTML page.

The page (Jinja2 template `report_templates/report.html.j2`, charts from report_charts.py as
inline SVG, no external address) shows what OUTDIR records and nothing else:
- the integer graph, each tensor coloured by bit width and labelled with its format; with
  --train the weight-gradient, activation-gradient and accumulator formats of every layer;
  saturation counts of the last `qcc eval` (eval.json) where they happen;
- the precision of every layer (seeds/001 Fig. 2: B_W, B_A, B_GW, B_GA, B_acc), the B_min sweep
  (p_m against B_min, eq. 1), p_m at C_o - 1, C_o, C_o + 1 and the costs of §2.2 (precision.json);
- with --target c (summary.json): flash per layer (weights and code, from an arm-none-eabi-gcc
  build of the emitted source), the arena plan as a timeline (backends/c/memory_plan.py), and
  Cortex-M4 instructions per layer when `qcc eval --mcu-layers` measured them (mcu_layers.json);
- training history (training.json); for a model trained by `qcc qat`, α per layer over
  training (qat.json, copied by compile from the model's metadata).

Every number printed from a JSON file carries `data-src="<file>:<JSON pointer>"` and its exact
value in `data-value`, so a test (or a reader) can check the page against the files.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from backends.c.build import ARM_ARCH, ARM_FLAGS, missing_tools
from backends.c.emit import emit_source
from qcc.core.errors import QccError
from qcc.core.ir import Value
from qcc.driver import report_charts as charts
from qcc.driver.io import atomic_file
from qcc.driver.mcu_profile import MCU_LAYERS_FILE
from qcc.driver.outdir import INTEGER_MODEL, QAT_HISTORY_FILE, Loaded, load_outdir

REPORT_FILE = "report.html"
EVAL_FILE = "eval.json"  # written by `qcc eval`
SUMMARY_FILE = "summary.json"  # written by --target c (backends/c/library.py)
TRAINING_FILE = "training.json"  # written by --train (qcc/driver/train_outdir.py)
SECTIONS = ("graph", "precision", "sweep", "costs", "saturation", "target-c", "training")


# -- eval.json ---------------------------------------------------------------------------------
def write_evaluation(outdir: Path, data: Path, samples: int, evaluation: Any) -> str:
    """Store the result of `qcc eval` in OUTDIR/eval.json (the report's saturation source);
    returns the line to print (a note when OUTDIR cannot be written, e.g. read-only)."""
    path = Path(outdir) / EVAL_FILE
    record = {"model_sha256": _model_digest(outdir), "data": str(data), "samples": samples,
              "float_accuracy": evaluation.float_accuracy,
              "integer_accuracy": evaluation.integer_accuracy, "p_m": evaluation.mismatch,
              "saturated_values": evaluation.report.total_overflows,
              "overflows": dict(evaluation.report.overflows)}
    try:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            tmp.chmod(0o644)
    except OSError as e:
        return f"qcc: note: could not store {path} ({e.strerror}); `qcc report` will not show it"
    return f"wrote {path}"


def _model_digest(outdir: Path) -> str:
    """sha256 of OUTDIR/model.qcc.onnx: ties eval.json to the model it measured (`qcc train`
    rewrites the model and keeps the other files)."""
    return hashlib.sha256((Path(outdir) / INTEGER_MODEL).read_bytes()).hexdigest()


# -- what OUTDIR holds -------------------------------------------------------------------------
@dataclass
class Facts:
    outdir: Path
    loaded: Loaded
    precision: dict
    summary: dict | None
    training: dict | None
    qat: dict | None  # qat.json: the `qcc qat` record of a QAT model
    evaluation: dict | None
    stale_evaluation: bool  # eval.json measured an earlier model.qcc.onnx (trained since)
    mcu_layers: dict | None  # mcu_layers.json of `qcc eval --mcu-layers`, if of this model


def read_facts(outdir: Path) -> Facts:
    outdir = Path(outdir)
    loaded = load_outdir(outdir)
    digest = _model_digest(outdir)
    evaluation = _optional_json(outdir / EVAL_FILE)
    stale = evaluation is not None and evaluation.get("model_sha256") != digest
    mcu_layers = _optional_json(outdir / MCU_LAYERS_FILE)
    if mcu_layers is not None and mcu_layers.get("model_sha256") != digest:
        mcu_layers = None  # measured an earlier model.qcc.onnx
    return Facts(outdir, loaded, loaded.precision, _optional_json(outdir / SUMMARY_FILE),
                 _optional_json(outdir / TRAINING_FILE), _optional_json(outdir / QAT_HISTORY_FILE),
                 None if stale else evaluation, stale, mcu_layers)


def _optional_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QccError(f"{path}: not valid JSON ({e})") from None


# -- numbers with their source -----------------------------------------------------------------
def pointer(*parts: object) -> str:
    """An RFC 6901 JSON pointer from path parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def format_number(value: object, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) and scale == 1.0:
        return f"{value:,}"
    return f"{value * scale:.6g}"


def sourced(value: object, source: str, scale: float = 1.0, unit: str = "") -> Markup:
    """A number as `<span data-src data-value>` text, checkable against its JSON file."""
    text = format_number(value, scale) + (f" {unit}" if unit and value is not None else "")
    raw = json.dumps(value)
    return Markup('<span class="num" data-src="{}" data-value="{}" data-scale="{}">{}</span>'
                  ).format(source, raw, repr(scale), text)


# -- the graph ----------------------------------------------------------------------------------
def _spec_text(v: Value) -> tuple[str, int | None]:
    if v.quant is not None and v.quant.format != "float":
        return str(v.quant), v.quant.bits
    if v.dtype.kind in "iu":
        return f"{v.dtype}", 8 * v.dtype.itemsize
    return "float", None


def _training_chips(layer: dict, key: str) -> list[charts.Chip]:
    """G_W, G_A and accumulator of a trained layer (training.json: exponents of the LSB)."""
    chips = []
    for label, bits_key, exp_key in (("G_W", "gw_bits", "gw_exp"), ("G_A", "ga_bits", "ga_exp"),
                                     ("acc", "acc_bits", "acc_exp")):
        bits, exp = layer.get(bits_key), layer.get(exp_key)
        if bits is None or exp is None:
            continue
        chips.append(charts.Chip(f"{key}-{label}", f"{label} fx{bits}(r=2^{exp + bits - 1})",
                                 int(bits)))
    return chips


def build_drawing(facts: Facts) -> tuple[charts.Drawing, dict[str, dict]]:
    """Boxes (ops with their constant and training tensors) and edge tensors by rank, and the
    details shown on hover, keyed by element id."""
    graph = facts.loaded.integer
    overflows = (facts.evaluation or {}).get("overflows", {})
    train_layers = {la["name"]: la for la in (facts.training or {}).get("layers", [])}
    precision_layers = {la["name"]: la for la in facts.precision.get("layers", [])}
    c_nodes = {n["name"]: n for n in (facts.summary or {}).get("nodes", [])}
    details: dict[str, dict] = {}
    tensor_keys = {name: f"t{i}" for i, name in enumerate(graph.values)}
    items: dict[str, charts.Box | charts.Chip] = {}
    flow = nx.DiGraph()

    def tensor_chip(v: Value, label: str) -> charts.Chip:
        text, bits = _spec_text(v)
        key = tensor_keys[v.name]
        details[key] = _tensor_details(v, overflows.get(v.name, 0))
        return charts.Chip(key, _short(f"{label} {text}", 46), bits, overflows.get(v.name, 0))

    for i, node in enumerate(graph.nodes):
        key = f"n{i}"
        box = charts.Box(key, _short(f"{display_name(node.name)} · {node.op_type}", 36))
        weighted = node.name in precision_layers
        for j, v in enumerate(node.inputs):
            if v is not None and v.is_const:
                label = {1: "W", 2: "b"}.get(j, f"in{j}") if weighted else _short(
                    display_name(v.name, 1), 12)
                box.chips.append(tensor_chip(v, label))
        for chip in _training_chips(train_layers.get(node.name, {}), key):
            box.chips.append(chip)
            label, fmt = chip.text.split()
            details[chip.key] = {"tensor": f"{label} of {node.name} (training)", "format": fmt,
                                 "bits": chip.bits}
        items[key] = box
        details[key] = _node_details(node, precision_layers.get(node.name),
                                     c_nodes.get(node.name), train_layers.get(node.name))
        flow.add_node(key)
        for v in node.inputs:
            if v is not None and not v.is_const:
                flow.add_edge(tensor_keys[v.name], key)
        for v in node.outputs:
            flow.add_edge(key, tensor_keys[v.name])
    for name, v in graph.values.items():
        if tensor_keys[name] in flow and not v.is_const:
            items[tensor_keys[name]] = tensor_chip(v, _short(display_name(name), 24))
    rows = [[items[k] for k in generation]
            for generation in nx.topological_generations(flow)]
    return charts.Drawing(rows, list(flow.edges)), details


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def display_name(name: str, parts: int = 2) -> str:
    """A short name for a picture: converters write `scope/layer/Op;scope/layer/Op2`; the
    last `parts` path components of the first alias say which layer it is. The details and
    tables keep the full name."""
    return "/".join(name.split(";")[0].split("/")[-parts:])


def _tensor_details(v: Value, saturated: int) -> dict:
    info: dict[str, Any] = {"tensor": v.name, "format": str(v.quant) if v.quant else "float",
                            "dtype": str(v.dtype)}
    if v.shape is not None:
        info["shape"] = list(v.shape)
    if v.quant is not None:
        info.update({f"spec.{k}": val for k, val in v.quant.to_dict().items()})
        if v.quant.step is not None:
            info["step Δ"] = v.quant.step
    if v.producer is not None:
        info["written by"] = v.producer.name
    if v.consumers:
        info["read by"] = ", ".join(n.name for n in v.consumers)
    if saturated:
        info["saturated values (last qcc eval)"] = saturated
    return info


def _node_details(node: Any, precision_row: dict | None, c_node: dict | None,
                  train_row: dict | None) -> dict:
    info: dict[str, Any] = {"node": node.name, "op": node.op_type}
    for k, val in node.attrs.items():
        if not hasattr(val, "shape"):
            info[f"attr {k}"] = val
    if precision_row is not None:
        info.update({k: precision_row[k] for k in charts.PRECISION_KEYS if k in precision_row})
        for k in ("E_W", "E_A", "alpha"):
            if precision_row.get(k) is not None:
                info[k] = precision_row[k]
    if c_node is not None:
        info["C function"] = c_node["function"] or "(no code: a view)"
        info["MACs"] = c_node["macs"]
        info["C kernel"] = c_node["note"]
    if train_row is not None:
        info["training update"] = train_row.get("update")
    return info


# -- the C target ------------------------------------------------------------------------------
def arena_plan(facts: Facts) -> dict | None:
    """The arena buffers of the emitted library (the same planner the emitter ran)."""
    if facts.summary is None:
        return None
    source = emit_source(facts.loaded.integer, facts.summary["name"])
    steps = [n["name"] for n in facts.summary["nodes"]]
    buffers = [{"name": b.name, "label": display_name(b.name), "offset": b.offset,
                "size": b.size, "start": b.start,
                "end": b.end} for b in sorted(source.memory.buffers, key=lambda b: b.offset)]
    return {"buffers": buffers, "steps": steps, "arena": source.memory.arena_size,
            "matches_summary": source.memory.arena_size == facts.summary["arena_bytes"]}


def flash_per_layer(outdir: Path, summary: dict) -> dict:
    """Bytes of weights (.rodata.<function>_*) and code (.text.<function>) per layer of the
    emitted source built for Cortex-M4 at -Os. The shipped build inlines each layer's function
    into <name>_infer, so code per layer comes from a second build with -fno-inline (only to
    attribute bytes to layers); weights come from the shipped flags."""
    missing = missing_tools("arm-none-eabi-gcc", "arm-none-eabi-size")
    if missing:
        return {"rows": [], "note": f"{', '.join(missing)} not installed: flash per layer "
                                    "not measured"}
    name = summary["name"]
    source = outdir / f"{name}.c"
    shipped = _section_sizes(source, ())
    separate = _section_sizes(source, ("-fno-inline", "-fno-inline-functions-called-once",
                                       "-fno-inline-small-functions"))
    rows = []
    for node in summary["nodes"]:
        fn = node["function"]
        if fn is None:
            continue
        weights = sum(s for sec, s in shipped.items()
                      if sec.startswith((f".rodata.{fn}_", f".data.{fn}_")))
        rows.append({"name": node["name"], "function": fn, "weight_bytes": weights,
                     "code_bytes": sum(s for sec, s in separate.items()  # incl. .constprop.N
                                       if sec == f".text.{fn}" or sec.startswith(f".text.{fn}."))
                     })
    runtime = _section_sizes(outdir / f"{name}_runtime.c", ())
    return {"rows": rows,
            "shipped_text": sum(s for sec, s in shipped.items() if sec.startswith(".text")),
            "shipped_rodata": sum(s for sec, s in shipped.items() if sec.startswith(".rodata")),
            "runtime_text": sum(s for sec, s in runtime.items() if sec.startswith(".text")),
            "note": None}


def _section_sizes(source: Path, extra: tuple[str, ...]) -> dict[str, int]:
    """Section name -> bytes of one object (`arm-none-eabi-size -A`)."""
    with tempfile.TemporaryDirectory(prefix="qcc-report-") as tmp:
        obj = Path(tmp) / "unit.o"
        for cmd in (["arm-none-eabi-gcc", *ARM_ARCH, *ARM_FLAGS, *extra, f"-I{source.parent}",
                     "-c", str(source), "-o", str(obj)], ["arm-none-eabi-size", "-A", str(obj)]):
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise QccError(f"{cmd[0]} failed on {source}: {result.stderr.strip()[:300]}")
    sizes = {}
    for line in result.stdout.splitlines():
        m = re.match(r"(\.\S+)\s+(\d+)\s+\d+", line)
        if m and int(m.group(2)):
            sizes[m.group(1)] = int(m.group(2))
    return sizes


# -- training ----------------------------------------------------------------------------------
@dataclass
class AlphaSeries:
    """One learned α of a QAT model over training: before training, then after every epoch."""

    layer: str
    role: str  # "weight" or "activation"
    values: list[float]

    @property
    def label(self) -> str:
        return f"{display_name(self.layer)} α_{self.role[0].upper()}"


def alpha_series(qat: dict | None) -> list[AlphaSeries]:
    """α per layer and role from qat.json ({"alpha": {layer: {role: [α0, α1, ...]}}}), every
    quantizer the record lists, learned (eq. 8) or not (fixed point's power-of-two range,
    --no-rcf's max|W̃|)."""
    return [AlphaSeries(layer, role, list(values))
            for layer, roles in ((qat or {}).get("alpha") or {}).items()
            for role, values in roles.items() if values]


def alpha_epochs(qat: dict) -> list[str]:
    """Column labels of the α history: "0" (before training), then each epoch with the widths
    it trained at (W·A, from the record's epochs)."""
    return ["0"] + [f"{i + 1} (W{e['bits']}A{e['act_bits']})"
                    for i, e in enumerate(qat.get("epochs", []))]


# -- the page ----------------------------------------------------------------------------------
def render_report(outdir: Path) -> str:
    facts = read_facts(outdir)
    precision = facts.precision
    layers = precision.get("layers", [])
    drawing, details = build_drawing(facts)
    arena = arena_plan(facts)
    flash = flash_per_layer(facts.outdir, facts.summary) if facts.summary else None
    if arena is not None:
        details.update({f"buffer-{i}": {"buffer": b["name"], "offset": b["offset"],
                                        "bytes": b["size"],
                                        "lives": f"{arena['steps'][b['start']]} .. "
                                                 f"{arena['steps'][b['end']]}"}
                        for i, b in enumerate(arena["buffers"])})
    alphas = alpha_series(facts.qat)
    sweep = precision.get("B_min_sweep")
    env = Environment(loader=PackageLoader("qcc.driver", "report_templates"),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(sourced=sourced, pointer=pointer, num=format_number,
                       short=display_name)
    page = env.get_template("report.html.j2")
    return page.render(
        title=f"qcc report: {facts.outdir.name}", outdir=str(facts.outdir), sections=SECTIONS,
        precision=precision, layers=layers, summary=facts.summary, training=facts.training,
        evaluation=facts.evaluation, stale_evaluation=facts.stale_evaluation, flash=flash,
        arena=arena,
        precision_keys=[k for k in charts.PRECISION_KEYS
                        if layers and all(la.get(k) is not None for la in layers)],
        graph_svg=Markup(charts.graph_svg(drawing)), legend_svg=Markup(charts.bits_legend()),
        precision_svg=Markup(charts.precision_chart(layers, [display_name(la["name"])
                                                             for la in layers]))
        if layers else None,
        sweep_svg=Markup(charts.sweep_chart(sweep, precision["pm_target"], precision["B_min"]))
        if sweep else None,
        flash_svg=Markup(charts.flash_chart([{**r, "name": display_name(r["name"])}
                                             for r in flash["rows"]]))
        if flash and flash["rows"] else None,
        arena_svg=Markup(charts.arena_chart(arena["buffers"],
                                            [display_name(s) for s in arena["steps"]],
                                            arena["arena"]))
        if arena else None,
        qat=facts.qat, alphas=alphas, alpha_epochs=alpha_epochs(facts.qat) if alphas else [],
        alpha_svg=Markup(charts.alpha_chart(
            {f"alpha-{i}": (a.label, a.values) for i, a in enumerate(alphas)},
            _stage_starts(facts.qat))) if alphas else None,
        has_alpha=any(la.get("alpha") is not None for la in layers),
        mcu_layers=facts.mcu_layers,
        macs={n["name"]: (i, n["macs"]) for i, n in enumerate((facts.summary or {}).get(
            "nodes", []))},
        details_json=Markup(json.dumps(details, default=str).replace("</", "<\\/")),
    )


def _stage_starts(qat: dict | None) -> list[tuple[int, str]]:
    """(epochs trained before a --progressive stage, its widths) for stages after the first:
    the quantizers move to the narrower grid there, keeping the trained α."""
    starts, previous = [], None
    for i, e in enumerate((qat or {}).get("epochs", [])):
        if previous is not None and e.get("stage") != previous:
            starts.append((i, f"W{e['bits']}A{e['act_bits']}"))
        previous = e.get("stage")
    return starts


def write_report(outdir: Path, output: Path | None = None) -> Path:
    """Render the report of OUTDIR into `output` (default OUTDIR/report.html), atomically."""
    output = Path(output) if output is not None else Path(outdir) / REPORT_FILE
    if output.is_dir():
        raise QccError(f"report: {output} is a folder; give the HTML file to write (-o FILE)")
    html = render_report(Path(outdir))
    with atomic_file(output) as tmp:
        tmp.write_text(html, encoding="utf-8")
        tmp.chmod(0o644)  # a page to open and share, like the other files of OUTDIR
    return output

