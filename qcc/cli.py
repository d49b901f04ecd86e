"""The `qcc` command line: inspect, run (and, as they land, compile, eval, train).

Every user-facing problem is a QccError, printed as one line `qcc: error: ...` with exit code 1.
Files are written atomically (to a temporary name, then renamed), so a failed command never
leaves a half-written output behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from qcc import __version__
from qcc.errors import QccError
from qcc.io import load_array, save_arrays

console = Console()


class QccGroup(click.Group):
    """Turns QccError into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except QccError as e:
            click.echo(f"qcc: error: {e}", err=True)
            sys.exit(1)


@click.group(cls=QccGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qcc")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="BLAS threads. The GEMMs of small models run fastest on one; several threads "
                   "contend badly on a busy machine.")
@click.pass_context
def main(ctx: click.Context, threads: int) -> None:
    """qcc: compile a trained ONNX model into fixed-point, APoT or binary arithmetic, check it with
    a bit-exact NumPy integer interpreter, and emit a C99 library for microcontrollers."""
    from threadpoolctl import threadpool_limits

    ctx.with_resource(threadpool_limits(limits=threads, user_api="blas"))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON instead.")
def inspect(model: Path, as_json: bool) -> None:
    """Per-node table of MODEL (.onnx): op, output shape, parameters and MACs, with totals.

    Dynamic dimensions of the inputs are taken as 1 for the counts. For a folder written by
    `qcc compile`, the precision of every layer (the L x 5 table and costs with --bits auto).
    """
    from qcc.analysis import summary_dict
    from qcc.onnx_import import import_model

    if model.is_dir():
        from qcc.compiler import load_outdir

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
                         ("params", "right"), ("MACs", "right")]:
        table.add_column(col, justify=justify)
    for row in summary["nodes"]:
        shape = "x".join(map(str, row["output_shape"])) if row["output_shape"] else "?"
        table.add_row(row["name"], row["op"], shape, f"{row['params']:,}", f"{row['macs']:,}")
    totals = summary["totals"]
    table.add_section()
    table.add_row(f"{totals['nodes']} nodes", "", "", f"{totals['params']:,}",
                  f"{totals['macs']:,}")
    console.print(table)


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
    from backends.numpy_int import run_integer
    from qcc.compiler import load_outdir
    from qcc.float_exec import run_float
    from qcc.onnx_import import import_model

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
                     help="Also compile the fixed-point training step (seeds/001): "
                          "training.json and train_state.npz for `qcc train`."),
        click.option("--update", type=click.Choice(["fx", "bc", "sr", "r"]), default="fx",
                     show_default=True,
                     help="--train: weight update: fx (accumulators), bc (BinaryConnect), "
                          "sr (stochastic rounding), r (rounding) (seeds/003 eq. 3-7)."),
        click.option("--lr", "train_lr", default="2^-4", show_default=True, metavar="2^-K",
                     help="--train: learning rate, a power of two (the update is a shift)."),
        click.option("--grad-ternary", type=int, default=0, show_default=True, metavar="S",
                     help="--train: weight gradients from S stochastic ternarizations of the "
                          "back-propagated gradients (seeds/000 Algorithm 1); 0: off."),
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
              help="Bits of every feed-forward tensor (1-16), or `auto` for the seeds/001 method.")
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
@click.option("--pm-target", type=float, default=0.01, show_default=True,
              help="--bits auto: largest allowed mismatch p_m against the float model.")
@click.option("--lr-min", type=float, default=None,
              help="--bits auto: smallest learning rate of training (eq. 4). Default: the "
                   "warm-up schedule's.")
@click.option("--target", type=click.Choice(["numpy", "c"]), default="numpy", show_default=True,
              help="c: also emit a C99 library (OUTDIR/<name>.h/.c, runtime, Makefile, "
                   "CMakeLists.txt, host harness, mcu/ for QEMU mps2-an386) and its summary.")
@_training_options
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), required=True,
              help="Output folder (replaced only when the compile succeeds).")
def compile(model: Path, bits: str, scheme: str, binary_activations: bool,
            overrides: Path | None, calib: Path | None,
            train_data: Path | None, pm_target: float, lr_min: float | None,
            target: str, outdir: Path, **training: Any) -> None:
    """Quantize MODEL (.onnx) into an integer graph and write OUTDIR.

    OUTDIR holds model.qcc.onnx (the integer graph, runnable with `qcc run OUTDIR`),
    reference.onnx (the float graph it was made from) and precision.json.
    """
    from qcc.compiler import check_bits, compile_model, known_schemes, write_outdir

    if scheme not in known_schemes():
        raise QccError(f"unknown scheme {scheme!r}; known: {', '.join(known_schemes())}")
    if bits != "auto" and not bits.isdigit():
        raise QccError(f"--bits must be a number from 1 to 16 or 'auto', got {bits!r}")
    options = _train_options(training)
    if options is not None and lr_min is None:  # eq. 4: the accumulators resolve the lr
        lr_min = 2.0 ** options.lr_exp
    compiled = compile_model(model, bits if bits == "auto" else check_bits(int(bits)), scheme,
                             calib, overrides, train_data, pm_target, lr_min,
                             binary_activations)
    if options is not None:
        from qcc.compiler import attach_training
        attach_training(compiled, options, calib, train_data)
    for note in compiled.notes:
        click.echo(f"qcc: note: {note}", err=True)
    samples = None
    if target == "c" and calib is not None:  # the C library's MCU example runs 4 of them
        from qcc.compiler import load_data
        samples = load_data(calib, compiled.reference, "calibration data")[0][:4]
    c_summary = write_outdir(compiled, outdir, target, model.stem, samples)
    _print_layers(compiled.precision)
    if c_summary is not None:
        from backends.c import summary_lines
        click.echo("\n".join(summary_lines(c_summary)))
    if options is not None:
        click.echo(f"training: update {options.update}, lr 2^{options.lr_exp}, batch "
                   f"{options.batch}, grad-ternary {options.grad_ternary or 'off'}, trainable "
                   f"{', '.join(la.name for la in compiled.training.program.trained)}; run "
                   f"`qcc train {outdir} --data DATA.npz --steps N`")
    click.echo(f"wrote {outdir}")


def _train_options(kw: dict[str, Any]) -> Any:
    """TrainOptions from the --train options, or None without --train."""
    from backends.numpy_int.training.outdir import parse_lr, parse_trainable
    from passes.training_program import TrainOptions

    if not kw["train"]:
        return None
    return TrainOptions(update=kw["update"], lr_exp=parse_lr(kw["train_lr"]),
                        grad_ternary=kw["grad_ternary"],
                        trainable=parse_trainable(kw["trainable"]), batch=kw["train_batch"])


@main.command()
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Labelled training data (.npz with keys x and y).")
@click.option("--steps", type=int, required=True, help="Training steps (minibatches).")
@click.option("--batch-size", type=int, default=None,
              help="Samples per step (at most the compiled --train-batch, its default).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the minibatch order.")
@click.option("--lr", "train_lr", default=None, metavar="2^-K",
              help="Learning rate (a power of two). Default: the compiled one.")
def train(outdir: Path, data: Path, steps: int, batch_size: int | None, seed: int,
          train_lr: str | None) -> None:
    """Train a folder compiled with --train in fixed point (the NumPy integer program).

    Writes the updated model back into OUTDIR (model.qcc.onnx, reference.onnx with the float
    weights reconstructed from the integers, train_state.npz); OUTDIR is unchanged on failure.
    """
    from backends.numpy_int.training.outdir import parse_lr, train_outdir
    from qcc.compiler import load_data, load_outdir

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


def _print_layers(precision: dict) -> None:
    """The per-layer precision table; with --bits auto the L x 5 configuration and costs."""
    auto = precision["mode"] == "auto"
    title = f"precision ({precision['mode']}, scheme {precision['scheme']})"
    if auto:
        pm = precision["p_m"]
        title += (f": B_min = {precision['B_min']}, p_m = {_pct(pm['C_o'])} at C_o, "
                  f"{_pct(pm['C_o-1'])} at C_o-1, {_pct(pm['C_o+1'])} at C_o+1")
    table = Table(title=title)
    keys = ["name", "op", "B_W", "B_A"] + (["B_GW", "B_GA", "B_acc"] if auto else []) + [
        "weight_format", "activation_format"]
    headers = ["layer", *keys[1:-2], "weights", "input"]
    if any(layer.get("alpha") is not None for layer in precision["layers"]):
        keys.append("alpha")  # APoT's clipping scale, chosen by least weight MSE
        headers.append("α")
    for col in headers:
        table.add_column(col)
    for layer in precision["layers"]:
        table.add_row(*[_cell(layer.get(k)) for k in keys])
    console.print(table)
    if auto:
        costs = Table(title="costs per training iteration (seeds/001 §2.2)")
        for col in ("", "C_W (bits)", "C_A (bits)", "C_M (FA)", "C_C (bits)"):
            costs.add_column(col)
        for row in ("float", "C_o", "reduction"):
            fmt = "{:.2f}x" if row == "reduction" else "{:.3g}"
            costs.add_row(row, *[fmt.format(precision["costs"][row][k])
                                 for k in ("C_W", "C_A", "C_M", "C_C")])
        console.print(costs)


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


@main.command(name="eval")
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Labelled data (.npz with keys x and y).")
def evaluate(outdir: Path, data: Path) -> None:
    """Accuracy of a compiled OUTDIR against its float reference, p_m and saturation counts."""
    from qcc.compiler import load_data, load_outdir
    from qcc.evaluate import evaluate_outdir

    loaded = load_outdir(outdir)
    x, y = load_data(data, loaded.reference, "evaluation data", need_labels=True)
    result = evaluate_outdir(loaded, x, y)
    table = Table(title=f"{outdir} on {len(x)} samples")
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("float accuracy", f"{100 * result.float_accuracy:.2f} %")
    table.add_row("integer accuracy", f"{100 * result.integer_accuracy:.2f} %")
    table.add_row("p_m (mismatch vs float)", f"{100 * result.mismatch:.2f} %")
    table.add_row("saturated values", f"{result.report.total_overflows:,}")
    console.print(table)
    for tensor, count in result.report.overflows.items():
        click.echo(f"  saturated in {tensor}: {count}")


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
    missing = [n for n in names if n not in feeds]
    if missing:
        raise QccError(f"missing input(s): {', '.join(missing)}")
    return feeds


if __name__ == "__main__":
    main()
