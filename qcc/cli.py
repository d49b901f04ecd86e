"""The `qcc` command line: inspect, run (and, as they land, compile, eval, train).

Every user-facing problem is a QccError, printed as one line `qcc: error: ...` with exit code 1.
Files are written atomically (to a temporary name, then renamed), so a failed command never
leaves a half-written output behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
def main() -> None:
    """qcc: compile a trained ONNX model into fixed-point, APoT or binary arithmetic, check it with
    a bit-exact NumPy integer interpreter, and emit a C99 library for microcontrollers."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON instead.")
def inspect(model: Path, as_json: bool) -> None:
    """Per-node table of MODEL (.onnx): op, output shape, parameters and MACs, with totals.

    Dynamic dimensions of the inputs are taken as 1 for the counts.
    """
    from qcc.analysis import summary_dict
    from qcc.onnx_import import import_model

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
    """Run MODEL with the float reference interpreter on the given inputs."""
    from qcc.float_exec import run_float
    from qcc.onnx_import import import_model

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
