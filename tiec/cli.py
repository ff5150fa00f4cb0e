"""The `tiec` command: check, stats, compile (PyTorch source), export (ONNX) and graph (a drawing).

Errors print as `file:line:col: error: …` with the source line and a caret, exit status 1, and
never leave a partial output file behind.
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys

from tiec.dsl.diagnostics import Source, Span, TieError
from tiec.output import check_output, write_output


def _value(text: str) -> int | float:
    for kind in (int, float):
        try:
            value = kind(text)
            break
        except ValueError:
            pass
    else:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number")
    if not abs(value) <= sys.float_info.max:  # float() takes nan, inf, and 1e400 as inf
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def _setting(text: str) -> tuple[str, int | float]:
    name, eq, value = text.partition("=")
    if not eq or not all(part.isidentifier() for part in name.strip().split(".", 1)):
        raise argparse.ArgumentTypeError(f"expected name=value or Model.name=value, got '{text}'")
    return name.strip(), _value(value.strip())


def _overrides(sets: list[tuple[str, int | float]], model: str | None) -> dict[str, int | float]:
    """With `--model M`, a plain `--set name=…` is M's alone: other models keep their defaults."""
    return {f"{model}.{name}" if model and "." not in name else name: value for name, value in sets}


def _dim(text: str) -> tuple[str, int]:
    name, eq, value = text.partition("=")
    if not eq or not name or not value.strip().isdigit() or not 1 <= int(value) <= 2**20:
        raise argparse.ArgumentTypeError(f"expected NAME=N with 1 <= N <= {2**20}, got '{text}'")
    return name, int(value)


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tiec", description="Compile .tie model specs to PyTorch and ONNX.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("file", help="the .tie file")
        p.add_argument("--set", dest="sets", action="append", type=_setting, default=[], metavar="NAME=VALUE",
                       help="override a model parameter (repeatable): `name=…` for every model that has it "
                            "(only the --model one where a command takes --model), `Model.name=…` for one")
        p.add_argument("--dtype", choices=("f32", "f16", "bf16", "f64"), default=None,
                       help="the dtype of parameters and float inputs where the spec names none (default f32); "
                            "`export --weights` converts float weights to it")
        return p

    command("check", "check a spec: syntax, names, shapes, sharing")
    p = command("stats", "parameter statistics: logical vs unique, share and tie groups")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = command("compile", "write standalone PyTorch source")
    p.add_argument("-o", "--output", help="output .py file (default: standard output)")
    p.add_argument("--model", help="one model (default: every model, in one Program module)")
    p = command("export", "export one model to ONNX")
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--model", help="the model to export (required when the file has several)")
    p.add_argument("--weights", help="a checkpoint: .safetensors, or a state dict saved with torch.save "
                   "(.pt, .bin); default: fresh weights")
    p.add_argument("--allow-nonfinite", action="store_true", help="export nan and inf weights instead of refusing")
    p.add_argument("--external-data", action="store_true",
                   help="write the weights to OUT.data beside OUT, as they are produced (automatic past 2 GiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--seed", type=int, default=0, help="seed for fresh weights (default 0)")
    p.add_argument("--quantize", choices=("int8",), help="store each weight matrix once as int8, a scale per row "
                   "(weight-only: compute stays float)")
    p = command("graph", "draw the dataflow, blocks, share and tie groups (SVG, PNG or DOT)")
    p.add_argument("-o", "--output", required=True, help="output .svg, .png or .dot file")
    p.add_argument("--model", help="one model (default: every model)")
    p.add_argument("--format", choices=("svg", "png", "dot"), help="the format (default: from the output's name)")
    p = command("collapse", "make tie groups whose trained members are within --eps one shared tensor; write "
                            "the weights and ONNX")
    p.add_argument("--weights", required=True, help="the trained checkpoint (.safetensors, or torch.save)")
    p.add_argument("--eps", type=_value, required=True, help="the largest relative distance ‖w_i − w̄‖/‖w̄‖ collapsed")
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--weights-out", help="output .safetensors file (default: the output's name with .safetensors)")
    p.add_argument("--model", help="the model (required when the file has several)")
    p.add_argument("--samples", type=int, default=4, help="sample inputs for the output change (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sample inputs (default 0)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("dedup", help="store each tensor of any ONNX file once",
                       description="merge initializers that are copies or transposes of each other, verified "
                                   "with onnxruntime")
    p.add_argument("file", help="the .onnx file (from any exporter)")
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs of the check (default 0)")
    p.add_argument("--dim", dest="dims", action="append", type=_dim, default=[], metavar="NAME=N",
                   help="size of a symbolic input dim in the check (default 2; repeatable)")
    return top


def _check_output(output: str, inputs: list[str | None]) -> None:
    check_output(output)
    try:
        out = os.stat(output)
    except OSError:
        return
    if not stat.S_ISREG(out.st_mode):  # /dev/stdin and /dev/stdout may well be one terminal
        return
    for path in inputs:  # `-o model.tie` would replace the spec; `-o w.pt --weights w.pt`, the weights
        try:
            same = path is not None and os.path.samestat(os.stat(path), out)
        except OSError:
            continue
        if same:
            raise TieError(f"cannot write {output}: it is the input file {path}", Span(Source(output, ""), 0, 0, 0, 0))


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def stats_table(stats: dict) -> str:
    """The readable form of `tiec stats`."""
    rows = [("model", "logical params", "unique params", "unique bytes", "logical/unique")]
    for name, m in {**stats["models"], "(program)": stats["program"]}.items():
        ratio = m["logical_params"] / m["unique_params"] if m["unique_params"] else 0.0
        rows.append((name, f"{m['logical_params']:,}", f"{m['unique_params']:,}", _human(m["unique_bytes"]) + "B",
                     f"{ratio:.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    reused = [(name, top, row) for name, m in stats["models"].items() for top, row in m["modules"].items()
              if row["logical_params"] > row["read_params"]]
    if reused:
        lines += ["", "modules used more than their tensors (logical params / distinct params read):"]
        for name, top, row in sorted(reused, key=lambda r: -r[2]["logical_params"])[:12]:
            ratio = row["logical_params"] / row["read_params"]
            lines.append(f"  {name}.{top}: {row['logical_params']:,} / {row['read_params']:,} ({ratio:.2f}x)")
    if stats["share_groups"]:
        lines += ["", "share groups (one tensor each; first member is canonical):"]
        for g in stats["share_groups"]:
            members = ", ".join(m + (".T" if m in g["transposed"] else "") for m in g["members"])
            lines.append(f"  #{g['id']} {g['shape']} {g['numel']:,} values: {members}")
    if stats["tie_groups"]:
        lines += ["", "tie groups (training penalty):"]
        for t in stats["tie_groups"]:
            members = ", ".join([m + (".T" if m in t["transposed"] else "") for m in t["members"]] +
                                [f"anchor({json.dumps(a)})" for a in t.get("anchors", ())])
            kind = "" if t.get("kind", "pairwise") == "pairwise" else f", {t['kind']}"
            lines.append(f"  #{t['id']} λ={t['lambda']:g} ({t['norm']}{kind}): {members}")
    convs = [(name, c) for name, m in stats["models"].items() for c in m["convolutions"]]
    if convs:
        lines += ["", "convolutions (weights shared across positions vs a locally connected layer):"]
        for name, c in convs:
            local = f"{c['locally_connected_params']:,}" if c["locally_connected_params"] else "dynamic"
            saving = f", {c['saving']:g}x fewer" if c["saving"] else ""
            lines.append(f"  {name}.{c['layer']}: {c['params']:,} params vs {local} unshared{saving}")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    output = getattr(args, "output", None)
    if output:  # before compiling: a spec can take a while, and this needs no spec
        _check_output(output, [args.file, getattr(args, "weights", None)])
    if args.command == "dedup":
        return _dedup(args)
    if args.command == "graph":  # an unknown format or a missing Graphviz, before compiling
        from tiec.backends.graph import output_format

        output_format(output, args.format)
    from tiec.api import load

    program = load(args.file, _overrides(args.sets, getattr(args, "model", None)), dtype=args.dtype or "f32")
    for w in program.warnings:
        print(w.render(), file=sys.stderr)
    if args.command == "check":
        print(f"{args.file}: ok: {len(program.models)} model(s) ({', '.join(program.models)}), "
              f"{len(program.ir.share_groups)} share group(s), {len(program.ir.tie_groups)} tie(s)")
    elif args.command == "stats":
        stats = program.stats()
        print(json.dumps(stats, indent=2) if args.json else stats_table(stats))
    elif args.command == "compile":
        source = program.python(args.model)
        if args.output:
            write_output(args.output, source)
        else:
            sys.stdout.write(source)
    elif args.command == "export":
        info = program.onnx(args.output, args.model, weights=args.weights, opset=args.opset, seed=args.seed,
                            allow_nonfinite=args.allow_nonfinite, quantize=args.quantize,
                            external_data=args.external_data or None,
                            progress=not args.quiet and sys.stderr.isatty(), convert=args.dtype is not None)
        beside = f" and {info['data_path']}" if "data_path" in info else ""
        print(f"wrote {args.output}{beside}: {info['bytes']:,} bytes, {info['initializers']} initializers")
        if "quantized" in info:
            q = info["quantized"]
            n = len(q["tensors"])
            print(f"int8: {n} weight {'matrix' if n == 1 else 'matrices'}, {q['int8_bytes'] + q['scale_bytes']:,} bytes with their "
                  f"scales (float32: {info['param_bytes'] - q['float_bytes_kept']:,}); largest weight error "
                  f"{q['max_abs_error']:.3g}")
    elif args.command == "collapse":
        from tiec.collapse import cli_run

        return cli_run(program, args)
    elif args.command == "graph":
        program.graph(args.output, args.model, args.format)
        print(f"wrote {args.output}")
    return 0


def _dedup(args: argparse.Namespace) -> int:
    from tiec.backends.onnx.dedup import dedup_file

    report = dedup_file(args.file, args.output, seed=args.seed, dims=dict(args.dims))
    merges = report["merges"]
    saved = report["initializer_bytes_before"] - report["initializer_bytes_after"]
    print(f"merged {len(merges)} initializer(s) into others, {saved:,} bytes no longer stored"
          + (":" if merges else ""))
    for m in merges:
        print(f"  {_shown(m.removed)} = {_shown(m.kept)}{'.T' if m.transposed else ''} ({m.nbytes:,} bytes)")
    print(f"wrote {args.output}: {report['bytes_after']:,} bytes (was {report['bytes_before']:,}); "
          f"onnxruntime outputs unchanged (max |diff| {report['max_abs_diff']:.3g})")
    return 0


def _shown(name: str) -> str:
    """A name from a file, printable: escapes instead of terminal control characters."""
    return name if name.isprintable() else ascii(name)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except TieError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tiec stats … | head`: the reader left; nothing to report to it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 141
    except (OSError, ValueError, RuntimeError) as e:  # I/O and backend failures, reported plainly
        print(f"tiec: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("TIEC_TRACEBACK"):
            raise
        print(f"tiec: internal error: {type(e).__name__}: {e}\n"
              "    this is a bug in tiec; please report it with the .tie file (TIEC_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
