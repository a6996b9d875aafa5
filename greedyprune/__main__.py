"""Command line: ``python -m greedyprune demo`` and ``python -m greedyprune eval``.

``demo`` prunes a shipped photo's visual tokens in a random-weight LLaVA-1.5-architecture model
(or in ``--model PATH``, a local checkpoint), printing token counts and prefill times and
writing a picture of the kept patches. ``eval`` compares a local model's answers on a JSONL file
with and without pruning, per method and budget (see :mod:`greedyprune.evaluate`).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _budget_list(text: str):
    """Token counts ("64,128") or fractions ("0.1,0.25")."""
    try:
        values = [float(v) if "." in v else int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated budgets, got {text!r}")
    from .evaluate import _check_keeps

    try:
        return _check_keeps(values)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def _name_list(text: str) -> List[str]:
    from . import methods

    names = [v.strip() for v in text.split(",") if v.strip()]
    for name in names:
        try:
            methods.get(name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error))
    return names


def _method(text: str) -> str:
    return _name_list(text)[0] if text else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m greedyprune",
        description="Training-free visual-token pruning for vision-language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="prune a photo's visual tokens in a LLaVA model; no download needed",
        description="Prune the visual tokens of a photo in a LLaVA-1.5-architecture model with "
                    "random weights (no download), or in a local checkpoint (--model): prints "
                    "tokens before/after and prefill times, writes a picture of the kept patches.")
    demo.add_argument("--model", metavar="PATH",
                      help="local checkpoint folder (model + processor; never downloaded)")
    demo.add_argument("--image", metavar="PATH", help="image file (default: the shipped photo)")
    demo.add_argument("--question", help="question about the image")
    demo.add_argument("--keep", type=int, default=64, help="visual tokens to keep (default 64)")
    demo.add_argument("--method", type=_method, default="greedyprune",
                      help="selector name (default greedyprune)")
    demo.add_argument("--out", default="greedyprune-demo.png",
                      help="picture to write (default greedyprune-demo.png)")
    demo.add_argument("--device", help="device for --model (default: cuda if available)")
    demo.add_argument("--repeats", type=int, default=3, help="timed prefills per setting")
    # For the test suite: the same 576 tokens in a model that runs in milliseconds.
    demo.add_argument("--model-size", default="demo", choices=["demo", "tiny"],
                      help=argparse.SUPPRESS)

    ev = commands.add_parser(
        "eval", help="compare a local model's answers with and without pruning",
        description="Answer every record of a JSONL file ({\"image\": ..., \"question\": ..., "
                    "\"answers\": [...]}) unpruned and with each method and budget; report VQA "
                    "accuracy, agreement with the unpruned answer and prefill time as a table, "
                    "CSV files and a plot.")
    ev.add_argument("--model", metavar="PATH", required=True,
                    help="local checkpoint folder (model + processor; never downloaded)")
    ev.add_argument("--data", metavar="FILE.jsonl", required=True)
    ev.add_argument("--keep", type=_budget_list, default=[64, 128, 192],
                    help="budgets per image, comma-separated: tokens (64,128) or fractions "
                         "(0.1,0.25) (default 64,128,192)")
    ev.add_argument("--methods", type=_name_list, default=["greedyprune", "divprune", "topk",
                                                           "random"],
                    help="selectors, comma-separated (default greedyprune,divprune,topk,random)")
    ev.add_argument("--out", default="greedyprune-eval",
                    help="folder for summary.md, summary.csv, answers.csv, plot.png")
    ev.add_argument("--limit", type=int, help="use only the first N records")
    ev.add_argument("--max-new-tokens", type=int, default=16)
    ev.add_argument("--lam", type=float, default=0.5, help="λ for greedyprune (default 0.5)")
    ev.add_argument("--saliency", default="text", choices=["text", "cls", "none"])
    ev.add_argument("--device", help="default: cuda if available")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo

        demo.main(args.model, image=args.image, question=args.question or demo.DEFAULT_QUESTION,
                  keep=args.keep, method=args.method, out=args.out, size=args.model_size,
                  device=args.device, repeats=args.repeats)
        return 0

    from . import evaluate
    from .demo import load_local

    try:
        records = evaluate.load_records(args.data, limit=args.limit)
    except (OSError, ValueError) as error:  # a bad data file is a usage error, not a crash
        parser.error(f"--data: {error}")
    model, processor = load_local(args.model, args.device)
    answerer = evaluate.HFAnswerer(model, processor, max_new_tokens=args.max_new_tokens,
                                   lam=args.lam, saliency=args.saliency)
    report = evaluate.compare(answerer, records, args.methods, args.keep,
                              progress=not args.no_progress, model=args.model)
    print(report.table())
    paths = report.save(args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
