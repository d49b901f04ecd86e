"""`qcc report`: the HTML page of a compiled folder, rendered in headless Chromium.

The page is checked as a reader would see it (Debian's chromium: no console error, every
section there, a screenshot that is not blank), and against the files it reports: every number
printed from precision.json, summary.json, eval.json or training.json carries its JSON pointer,
and must equal the value there. model.qcc.onnx is checked for the per-value descriptions Netron
displays.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import pytest
from PIL import Image

from qcc.driver.report import (
    SECTIONS,
    alpha_epochs,
    alpha_series,
    display_name,
    format_number,
    pointer,
)
from tests.conftest import run_qcc

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
MLPERF = ROOT / "examples" / "mlperf_tiny"
SOURCES = {"precision": "precision.json", "summary": "summary.json", "eval": "eval.json",
           "training": "training.json", "qat": "qat.json", "mcu": "mcu_layers.json"}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")
MAX_REPORT_BYTES = 2 * 1024 * 1024


# -- reading the page ----------------------------------------------------------------------------
class PageParser(HTMLParser):
    """Element ids, the numbers with their sources, and the <use> markers inside each <g id>."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.numbers: list[dict] = []
        self.markers: dict[str, int] = {}
        self.body: dict[str, str] = {}
        self._groups: list[str | None] = []
        self._number: dict | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "body":
            self.body = a
        if tag == "g":
            self._groups.append(a.get("id"))
        if tag == "use":
            for gid in self._groups:
                if gid:
                    self.markers[gid] = self.markers.get(gid, 0) + 1
        if tag == "span" and "data-src" in a:
            self._number = {**a, "text": ""}
            self.numbers.append(self._number)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "g":
            self._groups.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag == "g":
            self._groups.pop()
        if tag == "span":
            self._number = None

    def handle_data(self, data: str) -> None:
        if self._number is not None:
            self._number["text"] += data


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


def resolve(document: object, ptr: str) -> object:
    """RFC 6901."""
    for part in ptr.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    return path


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    JSON messages separated by NUL on file descriptors 3 and 4), with every console message,
    log entry and uncaught exception of the page recorded."""

    def __init__(self, profile: Path) -> None:
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()

        def attach_pipes() -> None:  # in the child: fds 3 and 4, inherited through exec
            read, write = os.dup(to_child), os.dup(from_child)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"], preexec_fn=attach_pipes, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Runtime", "Page", "Log"):
            self.call(f"{domain}.enable", session=self.session)

    def call(self, method: str, session: str | None = None, **params: object) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def _receive(self, timeout: float = 120) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], timeout)
            assert ready, "chromium did not answer"
            chunk = os.read(self._from_browser, 1 << 20)
            assert chunk, "chromium closed the DevTools pipe"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, page: Path, width: int = 1280, height: int = 2000) -> None:
        self.call("Emulation.setDeviceMetricsOverride", session=self.session, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", session=self.session, url=page.resolve().as_uri())
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._receive())

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", session=self.session, expression=expression,
                           returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def screenshot(self) -> np.ndarray:
        data = self.call("Page.captureScreenshot", session=self.session, format="png")["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def complaints(self) -> list[dict]:
        """Console output, error log entries and uncaught exceptions (the page logs nothing)."""
        return [e for e in self.events
                if e.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown")
                or (e.get("method") == "Log.entryAdded"
                    and e["params"]["entry"]["level"] in ("error", "warning"))]

    def close(self) -> None:
        self.call("Browser.close")
        self.process.wait(timeout=60)
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    session = DevTools(tmp_path / "profile")
    yield session
    session.close()


def check_page_in_chromium(browser: DevTools, page: Path) -> dict:
    """Load the page: no console message or error, its script finished, every section there.
    Returns the number of SVG markers per series id and the element ids of the page."""
    browser.open(page)
    assert browser.evaluate("document.body.dataset.ready") == "yes"
    assert browser.evaluate("document.getElementById('js-errors').hidden") is True
    ids = set(browser.evaluate("Array.from(document.querySelectorAll('[id]'), e => e.id)"))
    missing = [s for s in SECTIONS if s not in ids]
    assert missing == [], f"sections missing: {missing}"
    markers = browser.evaluate("Object.fromEntries(Array.from(document.querySelectorAll("
                               "'g[id]'), g => [g.id, g.querySelectorAll('use').length]))")
    assert browser.complaints() == []
    return {"ids": ids, "markers": markers}


def check_screenshot(browser: DevTools) -> np.ndarray:
    pixels = browser.screenshot().astype(np.float64)
    not_white = np.mean(np.any(pixels < 235, axis=2))
    assert pixels.std() > 20 and not_white > 0.05, (pixels.std(), not_white)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # charts, not a flat fill
    return pixels


def check_self_contained(html: str) -> None:
    """Opens with the network off: no address outside the file."""
    assert re.findall(r"\b[a-zA-Z][\w+.-]*://|(?<![:\w])//[\w-]+\.[\w.-]+", html) == []
    assert re.findall(r"<(?:link|iframe|img|embed|object)\b", html) == []
    assert re.findall(r"(?<![\w-])src\s*=", html) == []
    inside = ("#", "data:")  # a fragment of the page, or bytes embedded in it
    assert [h for h in re.findall(r'href="([^"]*)"', html) if not h.startswith(inside)] == []
    assert [u for u in re.findall(r"url\(([^)]*)\)", html) if not u.startswith("#")] == []
    assert "@import" not in html


def check_numbers(page: PageParser, files: dict[str, object]) -> set[str]:
    """Every sourced number of the page equals its value in the file (as stored and as shown);
    returns the sources seen."""
    seen = set()
    for number in page.numbers:
        source, ptr = number["data-src"].split(":", 1)
        expected = resolve(files[source], ptr)
        assert json.loads(number["data-value"]) == expected, number
        scale = float(number["data-scale"])
        shown = number["text"].removesuffix("%").strip().replace(",", "")
        if isinstance(expected, int | float) and not isinstance(expected, bool):
            assert float(shown) == pytest.approx(expected * scale, rel=1e-5, abs=1e-12), number
        else:
            assert shown == str(expected), number
        seen.add(number["data-src"])
    return seen


# -- digits: --bits auto --train --target c, evaluated ------------------------------------------
@pytest.fixture(scope="module")
def digits_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "digits"
    steps = [("compile", DIGITS / "digits.onnx", "--bits", "auto", "--train", "--target", "c",
              "--calib", DIGITS / "calib.npz", "--train-data", DIGITS / "train.npz", "-o", out),
             ("eval", out, "--data", DIGITS / "test.npz", "--mcu-layers"),
             ("report", out)]
    for args in steps:
        result = run_qcc(*args)
        assert result.returncode == 0, result.stderr
        if args[0] in ("compile", "eval"):
            assert f"qcc report {out}" in result.stdout.splitlines()[-1]
    assert (out / "eval.json").is_file()
    return out / "report.html"


@pytest.mark.slow
def test_digits_report_renders_in_chromium(digits_report: Path, browser: DevTools) -> None:
    page = check_page_in_chromium(browser, digits_report)
    check_screenshot(browser)
    precision = json.loads((digits_report.parent / "precision.json").read_text())
    layers = precision["layers"]
    for key in ("B_W", "B_A", "B_GW", "B_GA", "B_acc"):  # seeds/001 Fig. 2
        assert page["markers"].get(f"series-{key}") == len(layers), key
    assert page["markers"].get("sweep-exact", 0) + page["markers"].get("sweep-bound", 0) == len(
        precision["B_min_sweep"])
    assert {"flash-chart", "arena-chart", "instructions-table", "alpha-absent"} <= page["ids"]
    details = json.loads(browser.evaluate("document.getElementById('details-data').textContent"))
    assert set(details) <= page["ids"]  # every hover entry belongs to a drawn element
    summary = json.loads((digits_report.parent / "summary.json").read_text())
    ops = [k for k in details if re.fullmatch(r"n\d+", k)]
    assert len(ops) == len(summary["nodes"]) + 2  # + the input quantize and output dequantize
    hover = ("(id => { document.getElementById(id).dispatchEvent(new MouseEvent('mouseover', "
             "{bubbles: true})); return Array.from(document.querySelectorAll('#details tr'), "
             "r => [r.cells[0].textContent, r.cells[1].textContent]); })")
    for key in [ops[1], next(k for k in details if k.startswith("t")), "buffer-0"]:
        shown = dict(browser.evaluate(f"{hover}({json.dumps(key)})"))
        assert list(shown) == list(details[key]), key
        for name, value in details[key].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert float(shown[name]) == value, (key, name)
            else:
                assert shown[name] == (value if isinstance(value, str) else
                                       json.dumps(value, separators=(",", ":"))), (key, name)
    assert browser.complaints() == []


@pytest.mark.slow
def test_digits_report_numbers_equal_the_files(digits_report: Path) -> None:
    folder = digits_report.parent
    files = {key: json.loads((folder / name).read_text()) for key, name in SOURCES.items()
             if key != "qat"}
    seen = check_numbers(parse(digits_report.read_text()), files)
    precision = files["precision"]
    must_show = [pointer("layers", i, k) for i, la in enumerate(precision["layers"])
                 for k in ("B_W", "B_A", "B_GW", "B_GA", "B_acc", "weight_format")]
    must_show += [pointer("p_m", k) for k in ("C_o-1", "C_o", "C_o+1")]
    must_show += [pointer("costs", r, k) for r in ("float", "C_o", "reduction")
                  for k in ("C_W", "C_A", "C_M", "C_C")]
    must_show += [pointer("B_min_sweep", i, "p_m") for i in range(len(precision["B_min_sweep"]))]
    assert {f"precision:{p}" for p in must_show} <= seen
    assert {f"summary:{pointer(k)}" for k in ("arena_bytes", "flash_bytes", "macs")} <= seen
    assert {f"eval:{pointer('overflows', t)}" for t in files["eval"]["overflows"]} <= seen
    assert {f"mcu:{pointer('layers', i, 'instructions')}"
            for i in range(len(files["mcu"]["layers"]))} <= seen


@pytest.mark.slow
def test_digits_mcu_instructions_per_layer_add_up(digits_report: Path) -> None:
    """Per-layer counts (instrumented build) cover every layer with code and add up to the
    instrumented inference. Instrumenting changes GCC's inlining and scheduling a little: the
    instrumented inference measured 1-9 % off the shipped firmware's (qcc/driver/mcu_profile.py)."""
    folder = digits_report.parent
    record = json.loads((folder / "mcu_layers.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    assert [la["name"] for la in record["layers"]] == [n["name"] for n in summary["nodes"]
                                                        if n["function"]]
    assert all(la["instructions"] > 0 for la in record["layers"])
    layers = sum(la["instructions"] for la in record["layers"])
    assert layers + record["outside_layers"] == record["infer_instructions"]
    # outside the layers: the inference function's calls and argument set-up, a fixed cost
    # (830 instructions on digits) that the faster DSP kernels made 1.0 % of the inference
    assert 0 <= record["outside_layers"] < 0.02 * record["infer_instructions"]
    shipped = record["shipped_infer_instructions"]
    assert abs(record["infer_instructions"] - shipped) < 0.2 * shipped
    macs = {n["name"]: n["macs"] for n in summary["nodes"]}
    busiest = max(record["layers"], key=lambda la: la["instructions"])
    assert macs[busiest["name"]] == max(macs.values())  # the time goes where the MACs are


@pytest.mark.slow
def test_digits_report_flash_adds_up_and_is_self_contained(digits_report: Path) -> None:
    html = digits_report.read_text()
    check_self_contained(html)
    summary = json.loads((digits_report.parent / "summary.json").read_text())
    measured = re.findall(r'data-kind="(\w+)">([\d,]+)<', html)
    weights = sum(int(v.replace(",", "")) for k, v in measured if k == "weight_bytes")
    totals = {k: int(v.replace(",", "")) for k, v in measured if k.startswith(("shipped",
                                                                              "runtime"))}
    # every layer's constants are the model source's .rodata, which the summary measured too
    assert weights == totals["shipped_rodata"] == summary["sections"]["rodata"]
    assert all(int(v.replace(",", "")) > 0 for k, v in measured if k == "code_bytes")


@pytest.mark.slow
def test_compiled_model_carries_netron_descriptions(digits_report: Path) -> None:
    model = onnx.load(str(digits_report.parent / "model.qcc.onnx"))
    onnx.checker.check_model(model)
    quant = json.loads(next(p.value for p in model.metadata_props if p.key == "qcc.quant"))
    infos = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.input,
                                    *model.graph.output]}
    assert set(quant) <= set(infos)
    for name, spec in quant.items():
        props = {p.key: p.value for p in infos[name].metadata_props}
        assert props["qcc.bits"] == str(spec["bits"]) and props["qcc.format"] == spec["format"]
        assert infos[name].doc_string.startswith(f"qcc: {props['qcc.spec']} (")
    documented = [n for n in model.graph.node if n.doc_string.startswith("qcc precision")]
    assert len(documented) == len(model.graph.node)


@pytest.mark.slow
def test_bundled_example_eval_saturates_no_input(digits_report: Path) -> None:
    """`qcc eval` on the bundled example (the README's main job; this folder adds --train)
    counts no saturated input code: pixels at exactly 1.0 sit on the power-of-two edge of the
    input range, which gets the one code more it needs (passes/quantize_graph.cover_input)."""
    folder = digits_report.parent
    model = onnx.load(str(folder / "model.qcc.onnx"))
    quantize = next(n for n in model.graph.node if n.op_type == "Quantize")
    evaluation = json.loads((folder / "eval.json").read_text())
    assert evaluation["samples"] == 400
    assert evaluation["overflows"].get(quantize.output[0], 0) == 0, evaluation["overflows"]


@pytest.mark.slow
def test_training_makes_the_last_eval_stale(digits_report: Path, tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    shutil.copytree(digits_report.parent, folder)
    for args in [("train", folder, "--data", DIGITS / "train.npz", "--steps", "1"),
                 ("report", folder)]:
        result = run_qcc(*args)
        assert result.returncode == 0, result.stderr
    html = (folder / "report.html").read_text()
    assert "measured an earlier" in html
    assert not [n for n in parse(html).numbers if n["data-src"].startswith("eval:")]
    assert "history-table" in parse(html).ids
    assert "instructions-table" not in parse(html).ids  # measured the model before training


# -- the MLPerf Tiny models (--bits 8 --target c) and an APoT model -------------------------------
def cut_softmax(source: Path, target: Path) -> Path:
    """The model up to the input of its final Softmax (qcc quantizes the logits)."""
    graph = onnx.load(str(source)).graph
    last = graph.node[-1]
    output = last.input[0] if last.op_type == "Softmax" else graph.output[0].name
    onnx.utils.extract_model(str(source), str(target), [i.name for i in graph.input], [output])
    return target


@pytest.mark.slow
@pytest.mark.parametrize("model", ["autoencoder_ad", "dscnn_kws", "resnet8_ic", "mobilenet_vww"])
def test_mlperf_tiny_report_renders(model: str, tmp_path: Path, browser: DevTools) -> None:
    onnx_path = cut_softmax(MLPERF / f"{model}.onnx", tmp_path / f"{model}.onnx")
    out = tmp_path / model
    for args in [("compile", onnx_path, "--bits", "8", "--target", "c", "-o", out),
                 ("report", out, "-o", tmp_path / "page.html")]:
        result = run_qcc(*args)
        assert result.returncode == 0, result.stderr
    page = tmp_path / "page.html"
    assert page.stat().st_size < MAX_REPORT_BYTES
    check_self_contained(page.read_text())
    shown = check_page_in_chromium(browser, page)
    check_screenshot(browser)
    layers = json.loads((out / "precision.json").read_text())["layers"]
    assert shown["markers"]["series-B_W"] == shown["markers"]["series-B_A"] == len(layers)
    assert "flash-chart" in shown["ids"] and "arena-chart" in shown["ids"]


@pytest.mark.slow
def test_apot_report_shows_alpha(tmp_path: Path) -> None:
    out = tmp_path / "apot"
    for args in [("compile", DIGITS / "digits.onnx", "--bits", "4", "--scheme", "apot",
                  "--calib", DIGITS / "calib.npz", "-o", out), ("report", out)]:
        result = run_qcc(*args)
        assert result.returncode == 0, result.stderr
    page = parse((out / "report.html").read_text())
    alphas = [n for n in page.numbers if n["data-src"].endswith("/alpha")]
    layers = json.loads((out / "precision.json").read_text())["layers"]
    assert len(alphas) == len(layers)
    assert "target-c" in page.ids and "alpha-absent" in page.ids


# -- a QAT model: qcc qat -> compile -> report, α per layer over training -----------------------
@pytest.fixture(scope="module")
def qat_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """APoT W5A5 -> W4A4 (--progressive, one epoch each) on digits, compiled from QAT.onnx
    alone: its sidecar QAT.qat.json is removed first, the α history travels in the model."""
    tmp = tmp_path_factory.mktemp("qat-report")
    model, out = tmp / "qat.onnx", tmp / "qat"
    result = run_qcc("qat", DIGITS / "digits.onnx", "--scheme", "apot", "--bits", "4",
                     "--progressive", "5,4", "--epochs", "1", "--train-data",
                     DIGITS / "train.npz", "-o", model)
    assert result.returncode == 0, result.stderr
    (tmp / "qat.qat.json").unlink()
    for args in [("compile", model, "--calib", DIGITS / "calib.npz", "-o", out),
                 ("report", out)]:
        result = run_qcc(*args)
        assert result.returncode == 0, result.stderr
    return out / "report.html"


def stored_qat_record(model: Path) -> dict:
    proto = onnx.load(str(model))
    return json.loads(next(p.value for p in proto.metadata_props if p.key == "qcc.qat"))


@pytest.mark.slow
def test_qat_report_alpha_numbers_equal_the_model_record(qat_report: Path) -> None:
    folder = qat_report.parent
    record = stored_qat_record(folder.parent / "qat.onnx")
    assert json.loads((folder / "qat.json").read_text()) == record  # carried unchanged
    page = parse(qat_report.read_text())
    assert "alpha-chart" in page.ids and "alpha-table" in page.ids
    assert "alpha-absent" not in page.ids
    files = {"precision": json.loads((folder / "precision.json").read_text()), "qat": record}
    seen = check_numbers(page, files)
    stored = {f"qat:{pointer('alpha', layer, role, i)}"
              for layer, roles in record["alpha"].items() for role, values in roles.items()
              for i in range(len(values))}
    assert len(stored) == 4 * 2 * 3  # 4 layers x (weights, activations) x (initial, 2 epochs)
    assert {s for s in seen if s.startswith("qat:")} == stored


@pytest.mark.slow
def test_qat_report_renders_alpha_chart_in_chromium(qat_report: Path, browser: DevTools) -> None:
    shown = check_page_in_chromium(browser, qat_report)
    check_screenshot(browser)
    series = alpha_series(json.loads((qat_report.parent / "qat.json").read_text()))
    assert len(series) == 8
    for i, s in enumerate(series):  # one marker per epoch boundary, initial α included
        assert shown["markers"].get(f"alpha-{i}") == len(s.values) == 3, s.label


# -- small pieces ---------------------------------------------------------------------------------
def test_report_of_a_folder_that_is_not_compiled_is_one_line(tmp_path: Path) -> None:
    result = run_qcc("report", tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("qcc: error: ") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


def test_pointer_escapes_like_rfc_6901() -> None:
    doc = {"overflows": {"model/conv;x~1": 3}, "layers": [{"B_W": 5}]}
    assert resolve(doc, pointer("overflows", "model/conv;x~1")) == 3
    assert resolve(doc, pointer("layers", 0, "B_W")) == 5


def test_numbers_and_names_for_the_page() -> None:
    assert format_number(1352) == "1,352"
    assert format_number(0.005025125628140704, 100) == "0.502513"
    assert format_number(None) == "n/a"
    assert display_name("model/conv2d_5/BiasAdd;model/conv2d_5/Conv2D") == "conv2d_5/BiasAdd"
    record = {"alpha": {"model/fc1": {"weight": [0.5, 0.25], "activation": [2.0, 2.5]}},
              "epochs": [{"stage": 0, "bits": 4, "act_bits": 4}]}
    assert [(a.label, a.values) for a in alpha_series(record)] == [
        ("model/fc1 α_W", [0.5, 0.25]), ("model/fc1 α_A", [2.0, 2.5])]
    assert alpha_epochs(record) == ["0", "1 (W4A4)"]
    assert alpha_series(None) == []


def test_mcu_layers_without_a_c_library_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "numpy_only"
    result = run_qcc("compile", DIGITS / "digits.onnx", "--bits", "8", "--calib",
                     DIGITS / "calib.npz", "-o", out)
    assert result.returncode == 0, result.stderr
    result = run_qcc("eval", out, "--data", DIGITS / "test.npz", "--mcu-layers")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("qcc: error: --mcu-layers: ") and "--target c" in result.stderr
    assert not (out / "eval.json").exists() and not (out / "mcu_layers.json").exists()
