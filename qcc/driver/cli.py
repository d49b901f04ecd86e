"""The `qcc` command line: inspect, run (and, as they land, compile, eval, train).

Every user-facing problem is a QccError, printed as one line `qcc: error: ...` with exit code 1.
Files are written atomically (to a temporary name, then renamed), so a failed command never
leaves a half-written output behind.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
import numpy as np
from onnx import helper
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from backends.c import summary_lines
from backends.numpy_int import run_integer
from passes.allocate_widths import parse_bytes
from passes.precision import mismatch_upper_bound
from passes.training_program import TrainOptions
from qcc import __version__
from qcc.core import progress
from qcc.core.analysis import summary_dict
from qcc.core.errors import QccError
from qcc.core.float_exec import run_float
from qcc.core.onnx_import import import_model, load_model
from qcc.driver.evaluate import evaluate_outdir
from qcc.driver.io import check_output_dir, load_array, save_arrays
from qcc.driver.mcu_profile import check_measurable, measure_layers, write_layers
from qcc.driver.outdir import load_outdir
from qcc.driver.papers import FULL, cite
from qcc.driver.pipeline import (
    attach_training,
    check_bits,
    compile_model,
    known_schemes,
    load_data,
    write_outdir,
)
from qcc.driver.qat import run_command
from qcc.driver.report import write_evaluation, write_report
from qcc.driver.train_outdir import parse_grad_ternary, parse_lr, parse_trainable, train_outdir
from qcc.driver.train_outdir import train_data as make_train_data

console = Console()


class QccGroup(click.Group):
    """Turns every error into one line on stderr and a non-zero exit: a QccError (a problem
    with the input) as it is, anything else as an internal error to report. With QCC_DEBUG=1
    the traceback (or a QccError's further lines) follow."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except QccError as e:
            _fail(str(e), e)
        except KeyboardInterrupt as e:
            _fail("interrupted", e, code=130)
        except MemoryError as e:
            _fail("out of memory (the model or data is larger than this machine can hold)", e)
        except Exception as e:  # noqa: BLE001 -- the last line of defence: no traceback
            detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            _fail(f"internal error: {detail[:300]} (please report; QCC_DEBUG=1 shows the "
                  "traceback)", e)


def _fail(message: str, error: BaseException, code: int = 1) -> None:
    """Print `qcc: error: <first line>` (a multi-line message's rest, and the traceback of an
    internal error, only with QCC_DEBUG=1) and exit with `code`."""
    first, _, rest = message.strip().partition("\n")
    debug = os.environ.get("QCC_DEBUG", "") not in ("", "0")
    if rest and not debug:
        first += " (QCC_DEBUG=1 shows the details)"
    click.echo(f"qcc: error: {first}", err=True)
    if debug:
        if rest:
            click.echo(rest, err=True)
        if not isinstance(error, QccError):
            traceback.print_exception(error)
    sys.exit(code)


@click.group(cls=QccGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qcc")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="BLAS threads. The GEMMs of small models run fastest on one; several threads "
                   "contend badly on a busy machine.")
@click.pass_context
def main(ctx: click.Context, threads: int) -> None:
    """qcc: compile a trained ONNX model into fixed-point, APoT or binary arithmetic, check it with
    a bit-exact NumPy integer interpreter, and emit a C99 library for microcontrollers."""

    ctx.with_resource(threadpool_limits(limits=threads, user_api="blas"))
    progress.enable(progress.wanted())  # bars on stderr for a watching user, not for CI or pipes


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON instead.")
def inspect(model: Path, as_json: bool) -> None:
    """Per-node table of MODEL (.onnx): op, output shape, parameters and MACs, with totals.

    Dynamic dimensions of the inputs are taken as 1 for the counts. For a folder written by
    `qcc compile`, the precision of every layer (the L x 5 table and costs with --bits auto).
    """

    if model.is_dir():

        precision = load_outdir(model).precision
        if as_json:
            click.echo(json.dumps(precision, indent=2))
        else:
            _print_layers(precision)
        return

    summary = summary_dict(import_model(model, dynamic_dims=1))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{summary['model']} (opset {summary['opset']})")
    for col, justify in [("node", "left"), ("op", "left"), ("output shape", "left"),
                         ("params", "right"), ("MACs per sample", "right")]:
        table.add_column(col, justify=justify)
    for row in summary["nodes"]:
        shape = "x".join(map(str, row["output_shape"])) if row["output_shape"] else "?"
        table.add_row(row["name"], row["op"], shape, f"{row['params']:,}", f"{row['macs']:,}")
    totals = summary["totals"]
    table.add_section()
    table.add_row(f"{totals['nodes']} nodes", "", "", f"{totals['params']:,}",
                  f"{totals['macs']:,}")
    console.print(table)
    for line in _interface_lines(load_model(model)):
        click.echo(line)


def _interface_lines(model: Any) -> list[str]:
    """The graph inputs and outputs as declared in the file (names, dtypes, shapes; a dynamic
    dimension by its name or `?`): what `qcc run --input NAME=FILE.npy` must be given."""

    initializers = {t.name for t in model.graph.initializer}
    lines = []
    for kind, values in (("input", [v for v in model.graph.input if v.name not in initializers]),
                         ("output", list(model.graph.output))):
        for v in values:
            t = v.type.tensor_type
            dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
            dims = ([d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                     for d in t.shape.dim] if t.HasField("shape") else None)
            shape = "rank unknown" if dims is None else f"[{', '.join(dims)}]"
            lines.append(f"{kind} {v.name!r}: {dtype} {shape}")
    return lines


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "inputs", multiple=True, required=True, metavar="[NAME=]FILE.npy",
              help="Input array (.npy); NAME= selects the model input when there are several.")
@click.option("--output", "output", type=click.Path(path_type=Path), default=None,
              help="Write the output to this .npy (several outputs: .npz).")
def run(model: Path, inputs: tuple[str, ...], output: Path | None) -> None:
    """Run MODEL on the given inputs.

    MODEL is an .onnx file (float reference interpreter) or a folder written by `qcc compile`
    (the NumPy integer interpreter, with its saturation counts).
    """

    if model.is_dir():
        graph = load_outdir(model).integer
        feeds = _parse_inputs(inputs, [v.name for v in graph.inputs])
        results, report = run_integer(graph, feeds)
        click.echo(f"integer interpreter: {report.total_overflows} saturated values"
                   + "".join(f"\n  {t}: {c}" for t, c in report.overflows.items()))
    else:
        graph = import_model(model)
        feeds = _parse_inputs(inputs, [v.name for v in graph.inputs])
        results = run_float(graph, feeds)
    for name, y in results.items():
        click.echo(f"{name}: shape {list(y.shape)} dtype {y.dtype} "
                   f"min {np.min(y):.6g} max {np.max(y):.6g}" if y.size else f"{name}: empty")
        if y.ndim == 2 and y.shape[1] > 1 and np.issubdtype(y.dtype, np.floating):
            click.echo(f"  argmax per row: {np.argmax(y, axis=1).tolist()[:16]}")
    if output is not None:
        save_arrays(output, results)
        click.echo(f"wrote {output}")


def _training_options(fn: Any) -> Any:
    """The --train options of `qcc compile` (passes/training_program.py TrainOptions)."""
    options = [
        click.option("--train", is_flag=True,
                     help=f"Also compile the fixed-point training step ({cite('sakr2019')}): "
                          "training.json and train_state.npz for `qcc train`."),
        click.option("--update", type=click.Choice(["fx", "bc", "sr", "r"]), default="fx",
                     show_default=True,
                     help="--train: weight update: fx (accumulators), bc (BinaryConnect), "
                          f"sr (stochastic rounding), r (rounding) ({cite('li2017', 'eq. 3-7')})."),
        click.option("--lr", "train_lr", default="2^-4", show_default=True, metavar="2^-K",
                     help="--train: learning rate, a power of two (the update is a shift)."),
        click.option("--grad-ternary", default="0", show_default=True, metavar="S|auto[:N]",
                     help="--train: weight gradients from S stochastic ternarizations of the "
                          f"back-propagated gradients ({cite('banner2018', 'Algorithm 1')}); "
                          "0: off; auto: per layer the smallest S (at most N, default 64) "
                          "whose averaged ternarized weight gradient keeps R >= 0.7 with the "
                          "exact one, measured on --train-data."),
        click.option("--trainable", default=None, metavar="LAYER,...",
                     help="--train: train only these layers (default: all weighted layers)."),
        click.option("--train-batch", type=int, default=32, show_default=True,
                     help="--train: largest training batch the program takes."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--bits", "bits", default="8", show_default=True, metavar="N|auto",
              help="Bits of every feed-forward tensor (1-16), or `auto` for the per-tensor "
                   f"method of {FULL['sakr2019']}.")
@click.option("--scheme", default="fixed", show_default=True,
              help="Number format: fixed, affine, apot, pot, binary, ternary.")
@click.option("--binary-activations", is_flag=True,
              help="With --scheme binary: sign activations (all layers but the first), so dot "
                   "products run as XNOR-popcounts.")
@click.option("--overrides", type=click.Path(path_type=Path), default=None,
              help='JSON {"layer" | "@first" | "@last": {"scheme": S, "bits": N}} per layer.')
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Calibration inputs (.npz with key x). Default: N(0,1) noise, with a note.")
@click.option("--train-data", type=click.Path(path_type=Path), default=None,
              help="--bits auto: labelled training data (.npz, keys x and y) for the gradient "
                   "statistics. Default: the calibration inputs, labelled by the model.")
@click.option("--pm-target", type=float, default=None,
              help="--bits auto: largest mismatch p_m against the float model, certified by "
                   "its 95 % upper bound on the held-out half of --calib (an error if they are "
                   "too few). Default: 1 %, or the smallest bound the samples can certify.")
@click.option("--flash-budget", default=None, metavar="BYTES",
              help="--bits auto: most packed weight bytes (e.g. 64KiB); widths by an exact "
                   "knapsack on the noise gains, chosen by measured p_m.")
@click.option("--weight-rounding", type=click.Choice(["nearest", "gptq"]), default="gptq",
              show_default=True,
              help="Weights below 8 bits: gptq chooses each layer's codes for its output error "
                   "on the --calib inputs (GPTQ, Frantar et al. 2022, then bias correction); "
                   "nearest rounds each weight on its own. 8-bit weights always round to nearest.")
@click.option("--ram-budget", default=None, metavar="BYTES",
              help="--bits auto: most arena bytes (e.g. 32KiB) for the activations.")
@click.option("--lr-min", type=float, default=None,
              help="--bits auto: smallest learning rate of training (eq. 4). Default: the "
                   "warm-up schedule's.")
@click.option("--target", type=click.Choice(["numpy", "c"]), default="numpy", show_default=True,
              help="c: also emit a C99 library (OUTDIR/<name>.h/.c, runtime, Makefile, "
                   "CMakeLists.txt, host harness, mcu/ for QEMU mps2-an386) and its summary.")
@_training_options
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), required=True,
              help="Output folder, written only when the compile succeeds. An existing folder "
                   "is replaced only if it is empty or was written by qcc (it holds a "
                   ".qcc-output file); anything else is refused unless --force.")
@click.option("--force", is_flag=True,
              help="Replace the output folder even if qcc did not write it (never the current "
                   "folder, a parent of it, a file or a symbolic link).")
def compile(model: Path, bits: str, scheme: str, binary_activations: bool,
            overrides: Path | None, calib: Path | None,
            train_data: Path | None, pm_target: float | None, flash_budget: str | None,
            weight_rounding: str, ram_budget: str | None, lr_min: float | None,
            target: str, outdir: Path, force: bool, **training: Any) -> None:
    """Quantize MODEL (.onnx) into an integer graph and write OUTDIR.

    OUTDIR holds model.qcc.onnx (the integer graph, runnable with `qcc run OUTDIR`),
    reference.onnx (the float graph it was made from) and precision.json.
    """

    if scheme not in known_schemes():
        raise QccError(f"unknown scheme {scheme!r}; known: {', '.join(known_schemes())}")
    if bits != "auto" and not bits.isdigit():
        raise QccError(f"--bits must be a number from 1 to 16 or 'auto', got {bits!r}")
    check_output_dir(outdir, force)  # refuse before minutes of work, not after
    options = _train_options(training)
    if options is not None and options.grad_ternary_auto and train_data is None:
        raise QccError(AUTO_NEEDS_DATA)  # refused before the compile, not after
    if options is not None and lr_min is None:  # eq. 4: the accumulators resolve the lr
        lr_min = 2.0 ** options.lr_exp
    compiled = compile_model(model, bits if bits == "auto" else check_bits(int(bits)), scheme,
                             calib, overrides, train_data, pm_target, lr_min,
                             binary_activations, _bytes(flash_budget), _bytes(ram_budget),
                             for_training=options is not None, weight_rounding=weight_rounding)
    if options is not None:
        attach_training(compiled, options, calib, train_data)
    for note in compiled.notes:
        click.echo(f"qcc: note: {note}", err=True)
    samples = None
    if target == "c" and calib is not None:  # the C library's MCU example runs 4 of them
        samples = load_data(calib, compiled.reference, "calibration data")[0][:4]
    c_summary = write_outdir(compiled, outdir, target, model.stem, samples, force)
    _print_layers(compiled.precision)
    if c_summary is not None:
        click.echo("\n".join(summary_lines(c_summary)))
    if options is not None:
        ternary = ("auto" if options.grad_ternary_auto else options.grad_ternary) or "off"
        for line in compiled.training.samples_lines():
            click.echo(line)
        click.echo(f"training: update {options.update}, lr 2^{options.lr_exp}, batch "
                   f"{options.batch}, grad-ternary {ternary}, trainable "
                   f"{', '.join(la.name for la in compiled.training.program.trained)}; run "
                   f"`qcc train {outdir} --data DATA.npz --steps N`")
    click.echo(f"wrote {outdir}")
    click.echo(_report_hint(outdir))


AUTO_NEEDS_DATA = ("--grad-ternary auto measures the ternarization on labelled training data: "
                   "give --train-data DATA.npz (keys x and y)")


def _bytes(text: str | None) -> int | None:
    """--flash-budget / --ram-budget: bytes, with KiB/MiB (or kB/MB) suffixes."""

    return None if text is None else parse_bytes(text)


def _train_options(kw: dict[str, Any]) -> Any:
    """TrainOptions from the --train options, or None without --train."""

    if not kw["train"]:
        return None
    samples, auto_max = parse_grad_ternary(kw["grad_ternary"])
    return TrainOptions(update=kw["update"], lr_exp=parse_lr(kw["train_lr"]),
                        grad_ternary=samples, grad_ternary_auto=auto_max,
                        trainable=parse_trainable(kw["trainable"]), batch=kw["train_batch"])


def _minibatch_options(fn: Any) -> Any:
    """OUTDIR and the minibatches of `qcc train`, shared with `qcc train-data` (same draws)."""
    options = [
        click.argument("outdir", type=click.Path(path_type=Path)),
        click.option("--data", type=click.Path(path_type=Path), required=True,
                     help="Labelled training data (.npz with keys x and y)."),
        click.option("--steps", type=int, required=True, help="Training steps (minibatches)."),
        click.option("--batch-size", type=int, default=None,
                     help="Samples per step (at most the compiled --train-batch, its default)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the minibatch order."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@_minibatch_options
@click.option("--lr", "train_lr", default=None, metavar="2^-K",
              help="Learning rate (a power of two). Default: the compiled one.")
def train(outdir: Path, data: Path, steps: int, batch_size: int | None, seed: int,
          train_lr: str | None) -> None:
    """Train a folder compiled with --train in fixed point (the NumPy integer program).

    Writes the updated model back into OUTDIR (model.qcc.onnx, reference.onnx with the float
    weights reconstructed from the integers, train_state.npz); OUTDIR is unchanged on failure.
    """

    reference = load_outdir(outdir).reference
    x, y = load_data(data, reference, "training data", need_labels=True)
    run = train_outdir(outdir, x, y, steps, batch_size, seed,
                       None if train_lr is None else parse_lr(train_lr))
    h = run.history
    click.echo(f"trained steps {run.first_step + 1}..{run.last_step} in {h.seconds:.1f} s: "
               f"loss {h.loss[-1]:.4f}, training accuracy {100 * h.accuracy[-1]:.2f} %")
    for tensor, count in sorted(h.clipped.items()):
        click.echo(f"  clipped in {tensor}: {count}")
    click.echo(f"wrote {outdir}")


@main.command(name="train-data")
@_minibatch_options
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="The data file. Default: OUTDIR/train_data.i32 (what `make train` reads).")
def train_data(outdir: Path, data: Path, steps: int, batch_size: int | None, seed: int,
               output: Path | None) -> None:
    """Write the C train step's data file: the input codes and labels of the minibatches
    `qcc train` would run, for `make train` / `make train-mcu` in a folder compiled with
    --train --target c."""

    reference = load_outdir(outdir).reference
    x, y = load_data(data, reference, "training data", need_labels=True)
    path = output or Path(outdir) / "train_data.i32"
    make_train_data(outdir, x, y, steps, batch_size, seed).tofile(path)
    click.echo(f"wrote {path} ({steps} steps)")


def _print_layers(precision: dict) -> None:
    """The per-layer precision table; with --bits auto the L x 5 configuration and costs."""
    auto = precision["mode"] == "auto"
    title = f"precision ({precision['mode']}, scheme {precision['scheme']})"
    if auto:
        pm, upper = precision["p_m"], precision.get("p_m_upper", {})
        title += f": B_min = {precision['B_min']}, p_m = " + ", ".join(
            f"{_pct(pm[k])}{_bound(upper.get(k))} at {k}" for k in ("C_o", "C_o-1", "C_o+1"))
        if "gradient_statistics_from" in precision:
            title += f"; gradient statistics from {precision['gradient_statistics_from']}"
    table = Table(title=title)
    keys = ["name", "op", "B_W", "B_A"] + (["B_GW", "B_GA", "B_acc"] if auto else []) + [
        "weight_format", "activation_format"]
    headers = ["layer", *[f"{k} (bits)" for k in keys[2:-2]], "weights", "input"]
    headers.insert(1, "op")
    if any(layer.get("alpha") is not None for layer in precision["layers"]):
        keys.append("alpha")  # APoT's clipping scale, chosen by least weight MSE
        headers.append("α")
    if any(layer.get("binary_activations") for layer in precision["layers"]):
        keys.append("binary_activations")  # --binary-activations: sign(x), XNOR-popcount
        headers.append("XNOR")  # the layer reads sign(x) of its input
    for col in headers:
        table.add_column(col)
    for layer in precision["layers"]:
        table.add_row(*["unavailable" if layer.get("unavailable") and k in (
            "B_GW", "B_GA", "B_acc") else ("yes" if layer.get(k) else "no") if k ==
            "binary_activations" else _cell(layer.get(k)) for k in keys])
    console.print(table)
    for layer in precision["layers"]:
        if layer.get("unavailable"):
            click.echo(f"  {layer['name']}: B_GW, B_GA, B_acc unavailable: "
                       f"{layer['unavailable']}")
    if auto:
        costs = Table(title=f"costs per training iteration ({cite('sakr2019', '§2.2')})")
        for col in ("", "C_W (bits)", "C_A (bits)", "C_M (FA)", "C_C (bits)"):
            costs.add_column(col)
        for row in ("float", "C_o", "reduction"):
            fmt = "{:.2f}x" if row == "reduction" else "{:.3g}"
            costs.add_row(row, *[fmt.format(precision["costs"][row][k])
                                 for k in ("C_W", "C_A", "C_M", "C_C")])
        console.print(costs)
        _print_guarantee(precision)


def _print_guarantee(precision: dict) -> None:
    """--bits auto: the certified bound, the memory next to uniform 8-bit, and every
    configuration tried (passes/annotate_precision.py, passes/allocate_widths.py)."""
    certified = precision.get("certified")
    if certified is None:  # an OUTDIR from before the bound was reported
        return
    click.echo(f"certified: p_m <= {_pct(certified['p_m_upper'])} at "
               f"{100 * precision['confidence']:.0f} % confidence ({certified['mismatches']} of "
               f"{certified['samples']} held-out samples mismatch; target "
               f"{_pct(precision['pm_target'])}, {'met' if certified['met'] else 'NOT met'})")
    compiled = precision["compiled"]
    ref = compiled["uniform_8bit"]
    click.echo(f"memory: compiled ({compiled['label']}) flash {_kib(compiled['flash_bytes'])}, "
               f"RAM {_kib(compiled['ram_bytes'])}; uniform 8-bit flash "
               f"{_kib(ref['flash_bytes'])}, RAM {_kib(ref['ram_bytes'])}")
    table = Table(title="configurations tried (flash: packed weights, RAM: arena)")
    for col in ("configuration", "B_W", "B_A", "flash", "RAM", "predicted p_m", "p_m",
                "95 % bound"):
        table.add_column(col)
    for c in precision["configurations"]:
        table.add_row(c["label"], ",".join(map(str, c["B_W"])), ",".join(map(str, c["B_A"])),
                      _kib(c["flash_bytes"]), _kib(c["ram_bytes"]), f"{c['predicted_p_m']:.3g}",
                      f"{'>= ' if c.get('counting_stopped_early') else ''}{_pct(c['p_m'])} "
                      f"({c['mismatches']}/{c['samples']})",
                      _pct(c["p_m_upper"]))
    console.print(table)
    for note in precision.get("notes", []):
        click.echo(f"note: {note}")


def _kib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024:.1f} KiB"


def _bound(value: float | None) -> str:
    return "" if value is None else f" (<= {100 * value:.2f} %)"


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


@main.command(name="eval")
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Labelled data (.npz with keys x and y).")
@click.option("--mcu-layers", is_flag=True,
              help="Also run the C library (--target c) on QEMU's Cortex-M4 on the first 4 "
                   "samples and measure instructions per layer (OUTDIR/mcu_layers.json, shown "
                   "by `qcc report`).")
def evaluate(outdir: Path, data: Path, mcu_layers: bool) -> None:
    """Accuracy of a compiled OUTDIR against its float reference, p_m and saturation counts."""

    loaded = load_outdir(outdir)
    x, y = load_data(data, loaded.reference, "evaluation data", need_labels=True)
    if mcu_layers:

        check_measurable(outdir)
    result = evaluate_outdir(loaded, x, y)
    table = Table(title=f"{outdir} on {len(x)} samples")
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("float accuracy", f"{100 * result.float_accuracy:.2f} %")
    table.add_row("integer accuracy", f"{100 * result.integer_accuracy:.2f} %")
    table.add_row("p_m (mismatch vs float)", f"{100 * result.mismatch:.2f} %")
    table.add_row("p_m, one-sided 95 % upper bound", f"{100 * _eval_bound(result, len(x)):.2f} % "
                  f"(Clopper-Pearson, {round(result.mismatch * len(x))} of {len(x)})")
    table.add_row("saturated values", f"{result.report.total_overflows:,}")
    console.print(table)
    for tensor, count in result.report.overflows.items():
        click.echo(f"  saturated in {tensor}: {count}")

    click.echo(write_evaluation(outdir, data, len(x), result))
    if mcu_layers:

        record = measure_layers(outdir, loaded, x)
        for layer in record["layers"]:
            click.echo(f"  {layer['name']}: {layer['instructions']:,} instructions")
        click.echo(f"Cortex-M4 (QEMU, -icount): {record['infer_instructions']:,} instructions "
                   f"per inference instrumented, {record['shipped_infer_instructions']:,} as "
                   f"shipped; wrote {write_layers(outdir, record)}")
    click.echo(_report_hint(outdir))


def _eval_bound(result: Any, samples: int) -> float:
    """The same Clopper-Pearson bound `compile --bits auto` certifies (passes/precision.py)."""

    return mismatch_upper_bound(round(result.mismatch * samples), samples)


def _report_hint(outdir: Path) -> str:
    """The line `qcc compile` and `qcc eval` end with (qcc/driver/report.py)."""
    return f"report: qcc report {outdir}  (HTML page of the graph, precisions and memory)"


@main.command()
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="HTML file to write (default: OUTDIR/report.html).")
def report(outdir: Path, output: Path | None) -> None:
    """One self-contained HTML page of a compiled OUTDIR: the annotated graph, the precision
    per layer (Sakr & Shanbhag 2019, Fig. 2), the B_min sweep, costs, saturation of the last
    `qcc eval`, and with --target c flash per layer and the arena plan."""

    click.echo(f"wrote {write_report(outdir, output)}")


def _parse_inputs(specs: tuple[str, ...], names: list[str]) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for i, spec in enumerate(specs):
        name, sep, path = spec.partition("=")
        if not sep:
            if len(specs) != 1 and len(names) != len(specs):
                raise QccError("the model has several inputs: give them as --input NAME=FILE.npy")
            name, path = names[i] if i < len(names) else f"#{i}", spec
        if name not in names:
            raise QccError(f"the model has no input {name!r}; inputs: {', '.join(names)}")
        feeds[name] = load_array(Path(path), what=f"input {name!r}")
        if feeds[name].size == 0:
            raise QccError(f"input {name!r}: {path} holds no values (shape "
                           f"{list(feeds[name].shape)})")
    missing = [n for n in names if n not in feeds]
    if missing:
        raise QccError(f"missing input(s): {', '.join(missing)}")
    return feeds


@main.command(name="qat")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--scheme", type=click.Choice(["apot", "pot", "affine", "fixed", "binary",
                                             "ternary"]), default="apot", show_default=True)
@click.option("--bits", type=int, default=4, show_default=True, help="Weight bits.")
@click.option("--act-bits", type=int, default=None,
              help="Activation bits [default: --bits; 8 for binary and ternary].")
@click.option("--train-data", type=click.Path(path_type=Path), required=True,
              help="TRAIN.npz with x (inputs) and y (integer labels).")
@click.option("--val-data", type=click.Path(path_type=Path), default=None,
              help="VAL.npz (x, y): accuracy after every epoch.")
@click.option("--epochs", type=int, default=10, show_default=True,
              help="Epochs (per width with --progressive).")
@click.option("--lr", type=float, default=0.02, show_default=True,
              help="Initial learning rate (cosine to 0 over the epochs of each width).")
@click.option("--progressive", default=None, metavar="5,4,3",
              help="Train at each width in turn, each from the previous "
                   f"({cite('li2020', '§4')}).")
@click.option("--no-wn", is_flag=True, help=f"No weight normalization ({cite('li2020', 'eq. 9')}).")
@click.option("--no-rcf", is_flag=True, help="α = max|W| instead of learned (eq. 7-8).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="QAT.onnx to write (and QAT.qat.json next to it).")
def qat(**options: Any) -> None:
    """Quantization-aware training (Li, Dong & Wang 2020: WN, RCF, APoT/PoT/uniform/binary/
    ternary) of MODEL -> QAT.onnx with explicit QONNX / qcc quantizers, for `qcc compile`."""

    run_command(**options)


if __name__ == "__main__":
    main()
