"""`ponderscope train | eval | serve | import | results` — the one command line for the project."""
from __future__ import annotations

import argparse
import json
import shlex
import sys


def _train(args) -> None:
    from training.train import ConfigError, load_config, train

    command = "ponderscope " + shlex.join(sys.argv[1:])
    try:  # a bad config is the user's to fix: one line, not a traceback
        config = load_config(args.config, (args.set or []) + ([f"steps={args.steps}"] if args.steps is not None else []))
        out = train(config, args.out, device=args.device, resume=args.resume, command=command, progress=not args.no_progress)
    except (OSError, ConfigError) as error:
        raise SystemExit(f"ponderscope train: {error}") from None
    from models.checkpoint import read_card

    print(json.dumps(read_card(out)["metrics"]["test"], indent=2)[:4000])


def _eval(args) -> None:
    from models import CheckpointError
    from training.evaluate import NothingToEvaluate, evaluate_model

    for path in args.checkpoints:
        try:
            metrics = evaluate_model(path, device=args.device, write=not args.no_write)
        except (CheckpointError, NothingToEvaluate) as error:
            raise SystemExit(f"ponderscope eval: {error}") from None
        print(path)
        print(json.dumps(metrics, indent=2)[:4000])


def _serve(args) -> None:
    from server.app import run

    run(host=args.host, port=args.port, device=args.device, checkpoint_dirs=args.checkpoints, cache_dir=args.cache, data_roots=args.data_root,
        image_store_bytes=args.image_store_mb * 1024 * 1024)


def _import(args) -> None:
    from importers import ImportFailed, import_checkpoint

    command = "ponderscope " + shlex.join(args.argv)
    try:  # a source that does not fit is the user's to fix: one line, not a traceback
        out = import_checkpoint(args.format, args.source, args.out, args.model, args.num_classes, command=command)
    except (OSError, ImportFailed) as error:
        raise SystemExit(f"ponderscope import: {error}") from None
    print(f"wrote {out}/model.safetensors and {out}/card.json")


def _results(args) -> None:
    from training.results import write_results

    print(write_results(args.checkpoints or None, args.out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ponderscope", description="Look inside adaptive-computation networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a checkpoint directory")
    p.add_argument("--config", help="JSON or YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config entry (JSON value), e.g. --set adaptive.tau=0.01")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state if present")
    p.add_argument("--no-progress", action="store_true", help="log JSON lines instead of a progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="measure checkpoints and write the metrics into their cards")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-write", action="store_true", help="print only, leave the card alone")
    p.set_defaults(func=_eval)

    p = sub.add_parser("serve", help="start the dashboard")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoints", action="append", help="directory of checkpoint directories (repeatable); default: the bundled ones")
    p.add_argument("--cache", default=None, help="where dataset-view results are cached")
    p.add_argument("--data-root", action="append", metavar="DIR", help="a folder whose image folders cards may name as their test set (dataset imagefolder:PATH; repeatable)")
    p.add_argument("--image-store-mb", type=int, default=256, help="disk kept for uploaded images (least recently used dropped first; default 256)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("import", help="convert the authors' checkpoints (SACT TF, ConvNet-AIG PyTorch) into a checkpoint directory")
    p.add_argument("format", choices=["sact-tf", "convnet-aig"], help="sact-tf: a TF checkpoint prefix; convnet-aig: a .pth.tar of the authors' train.py")
    p.add_argument("source", help="the file (or TF checkpoint prefix, e.g. model.ckpt-100000) to read")
    p.add_argument("--out", required=True, help="checkpoint directory to write (must not exist or be empty)")
    p.add_argument("--model", required=True, help="family and depth: sact_resnet32, sact_resnet101, act_resnet101, resnet101, aig_resnet110, aig_resnet50 ...")
    p.add_argument("--num-classes", type=int, default=None, help="default: read from the checkpoint")
    p.set_defaults(func=_import)

    p = sub.add_parser("results", help="write the results table from the checkpoints' cards")
    p.add_argument("checkpoints", nargs="*", help="checkpoint directories, or folders of them (default: the bundled ones)")
    p.add_argument("--out", help="default: docs/results.md; README's copy is updated only for the default run")
    p.set_defaults(func=_results)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in cards as the command
    args.func(args)


if __name__ == "__main__":
    main()
