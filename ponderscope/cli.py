"""`ponderscope train | eval | serve | analyze | study | import | pretrained | results | render` — the one command line for the project."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from . import __version__


def _train(args) -> None:
    from ponderscope.training.train import ConfigError, load_config, train

    command = "ponderscope " + shlex.join(sys.argv[1:])
    try:  # a bad config is the user's to fix: one line, not a traceback
        config = load_config(args.config, (args.set or []) + ([f"steps={args.steps}"] if args.steps is not None else []))
        out = train(config, args.out, device=args.device, resume=args.resume, command=command, progress=not args.no_progress,
                    stop_after=args.stop_after)
    except (OSError, ValueError, ConfigError) as error:
        raise SystemExit(f"ponderscope train: {error}") from None
    from ponderscope.models.checkpoint import read_card

    if int(os.environ.get("RANK", "0")) == 0 and (out / "card.json").is_file() and not (out / "train_state").exists():
        print(json.dumps(read_card(out)["metrics"]["test"], indent=2)[:4000])


def _eval(args) -> None:
    from ponderscope.models import CheckpointError
    from ponderscope.training.evaluate import NothingToEvaluate, evaluate_model

    for path in args.checkpoints:
        try:
            metrics = evaluate_model(path, device=args.device, write=not args.no_write)
        except (CheckpointError, NothingToEvaluate) as error:
            raise SystemExit(f"ponderscope eval: {error}") from None
        print(path)
        print(json.dumps(metrics, indent=2)[:4000])


def _serve(args) -> None:
    from ponderscope.server.access import AccessError
    from ponderscope.server.app import run

    from .paths import default_checkpoint_dirs

    checkpoints = args.checkpoints or [str(p) for p in default_checkpoint_dirs()]  # bundled + `pretrained get`'s folder if there
    try:  # a contradiction or a short token is the user's to fix: one line, not a traceback
        run(host=args.host, port=args.port, device=args.device, checkpoint_dirs=checkpoints, cache_dir=args.cache, data_roots=args.data_root,
            image_store_bytes=args.image_store_mb * 1024 * 1024, analyses=args.analysis, execution=args.execution, token=args.token,
            no_token=args.no_token, request_threads=args.request_threads)
    except AccessError as error:
        raise SystemExit(f"ponderscope serve: {error}") from None


def _import(args) -> None:
    from ponderscope.importers import ImportFailed, import_checkpoint

    command = "ponderscope " + shlex.join(args.argv)
    try:  # a source that does not fit is the user's to fix: one line, not a traceback
        out = import_checkpoint(args.format, args.source, args.out, args.model, args.num_classes, command=command)
    except (OSError, ImportFailed) as error:
        raise SystemExit(f"ponderscope import: {error}") from None
    print(f"wrote {out}/model.safetensors and {out}/card.json")


def _pretrained(args) -> None:
    """The SACT authors' published checkpoints by name (importers/pretrained.py)."""
    from pathlib import Path

    from ponderscope.importers import ImportFailed, pretrained

    from .paths import user_models_dir

    if args.action == "list":
        print(pretrained.listing(None if args.out is None else Path(args.out).expanduser()))
        return
    try:
        out = pretrained.get(args.name, args.out, args.url, progress=not args.no_progress, command="ponderscope " + shlex.join(args.argv))
    except (ImportFailed, pretrained.FetchFailed, pretrained.DownloadFailed) as error:
        raise SystemExit(f"ponderscope pretrained get: {error}") from None
    except KeyboardInterrupt:
        where = Path(args.out).expanduser() if args.out else user_models_dir()
        raise SystemExit(f"ponderscope pretrained get: interrupted; what was downloaded is kept in {where}/.{args.name}.download/, "
                         "and the same command continues from it") from None
    print(f"wrote {out}/model.safetensors and {out}/card.json")
    if out.parent.resolve() == user_models_dir().resolve():
        print("`ponderscope serve` lists it")
    else:
        print(f"serve it with: ponderscope serve --checkpoints {shlex.quote(str(out.parent))}")


def _analyze(args) -> None:
    from ponderscope.core.data import DataSourceMissing

    from .analyze import analyze

    try:
        path = analyze(args.checkpoint, args.out, data=args.data, split=args.split, device=args.device, batch_size=args.batch_size,
                       workers=args.workers, shard_size=args.shard_size, limit=args.limit, progress=not args.no_progress,
                       command="ponderscope " + shlex.join(args.argv), execution=args.execution)
    except (OSError, ValueError, DataSourceMissing) as error:  # AnalysisError, and an unreadable image, are ValueErrors
        raise SystemExit(f"ponderscope analyze: {error}") from None
    if path is not None:
        result = json.loads(path.read_text())
        ponder = f", mean ponder {result['mean_ponder']:.3f}" if result.get("mean_ponder") is not None else ""
        print(f"{result['examples']} images: accuracy {result['accuracy']:.2%}, FLOPs {result['flops_ratio']:.1%} of dense{ponder}")
        print(f"wrote {path} (open it with: ponderscope serve --analysis {path.parent})")


def _study(args) -> None:
    """A what-if study of one or more models into a figure file (and its numbers as JSON)."""
    from ponderscope.core.answers import Reference, json_default
    from ponderscope.core.data import DataSourceMissing

    from . import figures, notebook, studies

    if args.kind == "report":
        return _study_report(args, studies)
    if not args.models or not args.out:
        raise SystemExit(f"ponderscope study {args.kind}: give one or more models and --out FILE")
    fmt = _figure_format("study", args.out)
    try:
        loaded = [notebook.load(name, device=args.device, execution=args.execution) for name in args.models]
        results, reference = {}, None
        for model in loaded:
            print(f"{args.kind} of {model.id} over {args.limit or 'all'} test images ...", file=sys.stderr, flush=True)
            if args.kind == "sweep":
                points = studies.sweep(model, limit=args.limit, data=args.data)
                if model.reference and len(loaded) > 1:  # a model that skips nothing (its family's declaration): the reference point
                    reference = Reference(label=model.id, accuracy=points[0].accuracy, flops_ratio=points[0].flops_ratio, examples=points[0].examples)
                else:
                    results[model.id] = points
            else:
                results[model.id] = studies.lesion(model, limit=args.limit, data=args.data)
    except (OSError, ValueError, DataSourceMissing) as error:  # (AnalysisError is a ValueError)
        raise SystemExit(f"ponderscope study: {error}") from None
    if args.kind == "sweep":
        figure = figures.sweep_figure(results, reference)
    else:
        figure = {"single": figures.lesion_figure, "random": figures.random_lesion_figure}[args.figure](results)
    if fmt == "json":
        data = json.dumps({"results": results, "reference": reference, "figure": json.loads(figure.to_json())}, default=json_default).encode("utf-8")
    elif fmt == "html":
        data = figures.to_html(figure).encode("utf-8")
    else:
        try:
            data = figures.to_image(figure, fmt, args.width, args.height, 1.0)
        except figures.StaticExportUnavailable as error:
            raise SystemExit(f"ponderscope study: no {fmt.upper()} here: {error}; write .html or .json instead") from None
    _write_output(args.out, data)


def _study_report(args, studies) -> None:
    """The bundled Fashion-MNIST models' what-if report: docs/whatif.md (+ .json) and the README's section."""
    from .core.answers import json_default
    from .paths import CHECKOUT
    from .readme import replace_section

    if CHECKOUT is None:
        raise SystemExit("ponderscope study report: it writes a checkout's docs/whatif.md and README (an installed ponderscope "
                         "has neither); for a figure of your own: ponderscope study sweep|lesion MODEL ... --out FILE")
    results = studies.report(args.limit, progress=lambda text: print(text, file=sys.stderr, flush=True), execution=args.execution)
    text = studies.report_markdown(results, args.limit)
    docs = CHECKOUT / "docs"
    (docs / "whatif.json").write_text(json.dumps(results, default=json_default))
    (docs / "whatif.md").write_text("# What if: sweeps and lesions of the bundled Fashion-MNIST models\n\n" + text)
    replace_section("whatif", text)
    print(text)


def _results(args) -> None:
    from ponderscope.training.results import write_results

    try:
        print(write_results(args.checkpoints or None, args.out))
    except (OSError, ValueError) as error:
        raise SystemExit(f"ponderscope results: {error}") from None


def _figure_format(command: str, path: str) -> str:
    """--out's format: html, json, png or svg (else a one-line error)."""
    fmt = path.lower().rsplit(".", 1)[-1]
    if fmt not in ("html", "json", "png", "svg"):
        raise SystemExit(f"ponderscope {command}: --out must end in .html, .json, .png or .svg, not {path!r}")
    return fmt


def _write_output(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    print(f"wrote {path}")


def _render(args) -> None:
    """One figure of the dashboard into a file: the model's figure for an image (its ponder map,
    its gates, or the input), for a text (--text), or for a parity vector."""
    from ponderscope.core.data import DataSourceMissing

    from . import figures, notebook

    out = _figure_format("render", args.out)
    try:
        model = notebook.load(args.model, device=args.device, execution=args.execution)
        figure, fallback = _render_figure(model, args, figures, notebook)
        if out == "html":
            data = figures.to_html(figure).encode("utf-8")
        elif out == "json":
            data = figure.to_json().encode("utf-8")
        else:
            try:
                data = figures.to_image(figure, out, args.width, args.height, args.scale)
            except figures.StaticExportUnavailable as error:
                if fallback is None:
                    raise SystemExit(f"ponderscope render: no {out.upper()} here: {error}; write .html or .json instead") from None
                print(f"ponderscope render: {error}; drawing the map with Pillow instead", file=sys.stderr)
                data = fallback(out)
    except (OSError, ValueError, IndexError, DataSourceMissing) as error:
        raise SystemExit(f"ponderscope render: {error}") from None
    _write_output(args.out, data)


def _render_figure(model, args, figures, notebook):
    """-> (the figure, None or a function drawing it as PNG/SVG bytes without a browser)."""
    if model.kind == "text":
        if args.text is None:
            raise ValueError(f"{model.id} is a text model: give the text with --text \"...\"")
        analysis = notebook.analyze_text(model, args.text)
        if args.layers:
            if analysis.layers is None:
                raise ValueError(f"{model.id} reports no layers per byte (its trace has no token_layers): leave out --layers")
            return figures.text_layers_figure(analysis, args.colormap), None
        return figures.text_figure(analysis, args.measure, args.colormap), None
    if args.layers:
        raise ValueError("--layers is for text models (the character x layer heatmap)")
    if args.input is None or args.text is not None:
        wanted = "an image model: give an image file or a test-sample index" if model.kind == "image" else "a parity model: give the vector"
        raise ValueError(f"{model.id} is {wanted}" + (", not --text" if args.text is not None else ""))
    if model.kind == "parity":  # "+0-0..." or "1,0,-1,..."
        text = args.input.strip()
        vector = [float(v) for v in text.split(",")] if "," in text else [{"+": 1.0, "-": -1.0, "0": 0.0}[c] for c in text if c in "+-0"]
        return notebook.parity_figure(model, [vector]), None
    if args.block not in (None, "all") and not args.block.isdigit():
        raise ValueError(f"--block is a block's index (0, 1, ...) or 'all', not {args.block!r}")
    image = int(args.input) if args.input.isdigit() and not os.path.exists(args.input) else args.input
    analysis = notebook.analyze_image(model, image, args.resolution, args.invert)
    measure = args.measure or "ponder"
    if args.block == "all":
        return figures.block_maps_figure(analysis, measure, args.colormap, args.opacity), None
    block = None if args.block is None else int(args.block)
    options = dict(block=block, measure=measure, colorscale=args.colormap, opacity=args.opacity)
    figure = figures.image_figure(analysis, **options)
    if analysis.ponder is None:
        return figure, None

    def fallback(fmt: str) -> bytes:
        draw = figures.map_png if fmt == "png" else lambda *a, **k: figures.map_svg(*a, **k).encode("utf-8")
        return draw(analysis, **options, width=round(args.width * args.scale), height=round(args.height * args.scale))

    return figure, fallback


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text}")
    return value


EXECUTIONS = ("auto", "sparse", "masked")


def execution_option(parser, where: str) -> None:
    parser.add_argument("--execution", choices=EXECUTIONS, default="auto",
                        help="how skipped work runs (the same numbers either way): auto (default) times sparse and masked (and, for SACT, "
                             f"tiles) once per model on this device at batch 1 and the analysis batch and runs the fastest (cached in {where}); "
                             "sparse or masked: always that")


def plugin_option(parser) -> None:
    parser.add_argument("--plugin", action="append", metavar="FILE.py",
                        help="a Python file registering your own model families (repeatable; it is run: only load code you trust). "
                             "Installed packages with a 'ponderscope.models' entry point are loaded too")


def _load_plugins(args) -> None:
    """--plugin files and installed entry points, before the command builds any model."""
    if not hasattr(args, "plugin"):
        return
    from .plugins import PluginError, load_plugins

    try:
        load_plugins(args.plugin or [])
    except PluginError as error:
        raise SystemExit(f"ponderscope {args.command}: plugin {error}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per face of the core (train, serve, analyze, ...)."""
    parser = argparse.ArgumentParser(prog="ponderscope", description="Look inside adaptive-computation networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a checkpoint directory (several processes: torchrun --nproc_per_node N -m ponderscope train ...)")
    p.add_argument("--config", help="JSON or YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config entry (JSON value), e.g. --set adaptive.tau=0.01")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state if present (under torchrun: OUT must be seen by every node)")
    p.add_argument("--stop-after", type=int, metavar="STEP", help="save the training state after STEP steps and stop (continue with --resume)")
    p.add_argument("--no-progress", action="store_true", help="log JSON lines instead of a progress bar")
    p.set_defaults(func=_train)
    plugin_option(p)

    p = sub.add_parser("eval", help="measure checkpoints and write the metrics into their cards")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-write", action="store_true", help="print only, leave the card alone")
    p.set_defaults(func=_eval)
    plugin_option(p)

    p = sub.add_parser("serve", help="start the dashboard")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only, no token asked; "
                   "any other address asks for an access token)")
    p.add_argument("--port", type=int, default=8000)
    access = p.add_mutually_exclusive_group()
    access.add_argument("--token", default=None, help="the access token to ask for (default: $PONDERSCOPE_TOKEN, else a new random one "
                        "printed as a link at start-up when --host is not a loopback address)")
    access.add_argument("--no-token", action="store_true", help="ask for no token even when listening beyond this machine (logged as a warning)")
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoints", action="append", help="directory of checkpoint directories (repeatable); default: the bundled ones "
                   "and, when it exists, the folder `ponderscope pretrained get` fills ($PONDERSCOPE_MODELS, else e.g. ~/.local/share/ponderscope/models)")
    p.add_argument("--cache", default=None, help="where dataset-view results are cached")
    p.add_argument("--data-root", action="append", metavar="DIR", help="a folder whose image folders cards may name as their test set (dataset imagefolder:PATH; repeatable)")
    p.add_argument("--analysis", action="append", metavar="DIR", help="a `ponderscope analyze` folder to show in the Dataset view (repeatable; "
                   "those inside a checkpoint's own folder are found without it)")
    p.add_argument("--image-store-mb", type=int, default=256, help="disk kept for uploaded images (least recently used dropped first; default 256)")
    p.add_argument("--request-threads", type=positive, default=None, metavar="N",
                   help="requests worked on at once, the others waiting in line (default: the CPU cores this process may use, at least 2)")
    execution_option(p, "the --cache folder")
    p.set_defaults(func=_serve)
    plugin_option(p)

    p = sub.add_parser("import", help="convert the authors' checkpoints (SACT TF, ConvNet-AIG PyTorch) into a checkpoint directory")
    p.add_argument("format", choices=["sact-tf", "convnet-aig"], help="sact-tf: a TF checkpoint prefix (or its folder, or the authors' "
                   ".tar.gz as published); convnet-aig: a .pth.tar of the authors' train.py")
    p.add_argument("source", help="the file (or TF checkpoint prefix, e.g. model.ckpt-100000) to read")
    p.add_argument("--out", required=True, help="checkpoint directory to write (must not exist or be empty)")
    p.add_argument("--model", required=True, help="family and depth: sact_resnet32, sact_resnet101, act_resnet101, resnet101, aig_resnet110, aig_resnet50 ...")
    p.add_argument("--num-classes", type=int, default=None, help="default: read from the checkpoint")
    p.set_defaults(func=_import)

    p = sub.add_parser("pretrained", help="the SACT authors' published checkpoints by name: list them, or download, unpack and import one")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="the published checkpoints, their addresses and sizes, and which are fetched")
    q.add_argument("--out", metavar="DIR", help="the folder to look in (default: the per-user folder, $PONDERSCOPE_MODELS)")
    q = actions.add_parser("get", help="download (resumable), check, unpack safely and import one into DIR/NAME; never prompts")
    q.add_argument("name", help="sact-cifar10-resnet32, sact-imagenet-resnet101 or imagenet-resnet101")
    q.add_argument("--out", metavar="DIR", help="where NAME's folder goes (may exist; default: the per-user folder that `serve` lists, "
                   "$PONDERSCOPE_MODELS or e.g. ~/.local/share/ponderscope/models)")
    q.add_argument("--url", help="a mirror (http:// or https://; its own announced size is checked) or a local .tar.gz, instead of "
                   "the authors' address")
    q.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_pretrained)

    p = sub.add_parser("analyze", help="the Dataset view's statistics over an image folder of any size, streaming and resumable "
                                       "(several processes: torchrun --nproc_per_node N -m ponderscope analyze ...)")
    p.add_argument("checkpoint", help="a bundled checkpoint id or a checkpoint folder")
    p.add_argument("--data", default="test", help="imagefolder:PATH (PATH/val, or PATH's held-out 10%%), or 'test': the model's own test set (default)")
    p.add_argument("--split", choices=["val", "train", "all"], default="val",
                   help="which split of an image folder (default val; all: every image, for a folder that is one split already)")
    p.add_argument("--out", required=True, help="folder for shards and results; run again to continue a stopped analysis")
    p.add_argument("--device", default="auto", help="auto (CUDA when present; cuda:LOCAL_RANK under torchrun), cpu, cuda")
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--workers", type=int, choices=range(0, 65), metavar="N", default=min(4, os.cpu_count() or 1), help="decoding processes per rank (default min(4, CPUs))")
    p.add_argument("--shard-size", type=positive, default=1000, help="images per shard: the unit of work kept when a run stops (default 1000)")
    p.add_argument("--limit", type=positive, help="only the first LIMIT images")
    p.add_argument("--no-progress", action="store_true")
    execution_option(p, "$PONDERSCOPE_CACHE or ~/.cache/ponderscope")
    p.set_defaults(func=_analyze)
    plugin_option(p)

    p = sub.add_parser("study", help="what if: accuracy vs FLOPs as the halting threshold / cap / gate bias moves (sweep), or "
                                     "with residual units removed (lesion), for one or more models, into a figure file")
    p.add_argument("kind", choices=["sweep", "lesion", "report"], help="report: the bundled Fashion-MNIST models' sweeps and lesions "
                   "into docs/whatif.md and the README")
    p.add_argument("models", nargs="*", help="bundled checkpoint ids or checkpoint folders (a dense one is the sweep's reference point)")
    p.add_argument("--limit", type=int, help="the first LIMIT test images (default: all)")
    p.add_argument("--data", help="imagefolder:PATH: study over that folder's val images instead of the model's test set")
    p.add_argument("--figure", choices=["single", "random"], default="single", help="lesion: one unit at a time (default) or k random units")
    p.add_argument("--out", help="FILE.html (offline), .json (numbers and plotly figure), .png or .svg")
    p.add_argument("--width", type=int, default=900)
    p.add_argument("--height", type=int, default=560)
    p.add_argument("--device", default="cpu")
    execution_option(p, "$PONDERSCOPE_CACHE or ~/.cache/ponderscope")
    p.set_defaults(func=_study)
    plugin_option(p)

    p = sub.add_parser("results", help="write the results table from the checkpoints' cards")
    p.add_argument("checkpoints", nargs="*", help="checkpoint directories, or folders of them (default: the bundled ones)")
    p.add_argument("--out", help="default: docs/results.md of a checkout; README's copy is updated only for the default run")
    p.set_defaults(func=_results)

    p = sub.add_parser("render", help="draw a model's figure for an image, a test sample, a text or a parity vector into HTML, JSON, PNG or SVG")
    p.add_argument("model", help="a bundled checkpoint id (checkpoints/) or a checkpoint folder")
    p.add_argument("input", nargs="?", help="image models: an image file or a test-sample index; parity: the vector, e.g. +0-0+... or 1,0,-1,...")
    p.add_argument("--text", help="text models: the text to read (instead of INPUT)")
    p.add_argument("--layers", action="store_true", help="text models whose layers run per byte (Trace.token_layers): the character x layer "
                                                         "heatmap instead of the per-character chart")
    p.add_argument("--out", required=True, help="FILE.html (self-contained, works offline), .json (plotly JSON), .png or .svg")
    p.add_argument("--block", help="SACT/ACT: one block's map (0-based index) or 'all' (every block); default: the total over blocks")
    p.add_argument("--measure", choices=["ponder", "units", "steps"], help="maps: ponder (N+R, default) or units (N); text: steps (N) or ponder (N+R), default what varies")
    p.add_argument("--colormap", default="Viridis", help="Viridis (default), Cividis, Inferno, Hot, YlOrRd, Blues, Greys or Jet")
    p.add_argument("--opacity", type=float, default=0.6, help="of the map over the image (default 0.6)")
    p.add_argument("--resolution", choices=["train", "native"], default="train", help="run at the training size (default) or the image's own")
    p.add_argument("--invert", action="store_true", help="invert grey levels first (dark-on-light photos for light-on-dark datasets)")
    p.add_argument("--width", type=int, default=700, help="PNG/SVG width in pixels (default 700)")
    p.add_argument("--height", type=int, default=560, help="PNG/SVG height in pixels (default 560)")
    p.add_argument("--scale", type=float, default=1.0, help="PNG/SVG pixel scale (default 1)")
    p.add_argument("--device", default="cpu")
    execution_option(p, "$PONDERSCOPE_CACHE or ~/.cache/ponderscope")
    p.set_defaults(func=_render)
    plugin_option(p)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in cards as the command
    _load_plugins(args)
    args.func(args)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.func in (_train, _analyze):
        # One process of a torchrun job whose work is done and whose process group is closed
        # (Processes.close: barrier, destroy): leave without the interpreter's teardown, in which
        # gloo's background threads now and then abort the process ("terminate called without an
        # active exception", SIGABRT), and torchrun then reports the finished job as failed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
