"""Command line: ``python -m greedyprune demo`` and ``python -m greedyprune eval``.

``demo`` asks the built-in model (:mod:`greedyprune.builtin`) a question about a generated scene
and answers it unpruned and pruned by each method, printing the answers, token counts and
prefill times and writing a picture of the kept patches; ``--model PATH`` does the same with a
local checkpoint and ``--random-weights`` with a LLaVA-1.5-sized model of random weights (for
timing at real sizes). ``eval`` compares answers with and without pruning, per method and
budget (see :mod:`greedyprune.evaluate`): by default the built-in model on generated scene
questions, or a local model (``--model``) on a JSONL file (``--data``).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


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


def _seed_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _prompt(text: str) -> str:
    if "{question}" not in text:
        raise argparse.ArgumentTypeError(f"the prompt must contain {{question}}, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m greedyprune",
        description="Training-free visual-token pruning for vision-language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="ask the built-in model about a generated scene, pruned and unpruned",
        description="Ask the built-in model (a small LLaVA trained on generated scenes, shipped "
                    "with the package) a question about a generated scene; answer it unpruned "
                    "and with each method; print the answers, tokens before/after and prefill "
                    "times; write a picture of the kept patches. --model runs a local "
                    "checkpoint instead; --random-weights a LLaVA-1.5-sized model with random "
                    "weights (576 visual tokens), for timing at real sizes.")
    source = demo.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH",
                        help="local checkpoint folder (model + processor; never downloaded)")
    source.add_argument("--random-weights", action="store_true",
                        help="a LLaVA-1.5-sized model with random weights on a shipped photo: "
                             "real timings, meaningless answers")
    demo.add_argument("--image", metavar="PATH",
                      help="image file (default: a generated scene, or the shipped photo)")
    demo.add_argument("--question", help="question about the image")
    demo.add_argument("--seed", type=int, default=0,
                      help="which generated scene and question (default 0)")
    demo.add_argument("--keep", type=_positive,
                      help="visual tokens to keep (default 16 of the built-in model's 144, "
                           "else 64)")
    demo.add_argument("--method", type=_name_list, default=None,
                      help="selectors, comma-separated; the first is drawn (default "
                           "greedyprune,divprune,random with the built-in model, else "
                           "greedyprune)")
    demo.add_argument("--out", default="greedyprune-demo.png",
                      help="picture to write (default greedyprune-demo.png)")
    demo.add_argument("--device", help="device for --model (default: cuda if available)")
    demo.add_argument("--repeats", type=int, default=3, help="timed prefills per setting")
    # For the test suite: the same 576 tokens in a model that runs in milliseconds.
    demo.add_argument("--model-size", default="demo", choices=["demo", "tiny"],
                      help=argparse.SUPPRESS)

    ev = commands.add_parser(
        "eval", help="compare a model's answers with and without pruning",
        description="Answer every record unpruned and with each method and budget; report VQA "
                    "accuracy (per question category too, when records have one), agreement "
                    "with the unpruned answer and prefill time as tables, CSV files and a plot. "
                    "By default the built-in model answers --num-questions generated scene "
                    "questions; --model and --data (a JSONL file of {\"image\": ..., "
                    "\"question\": ..., \"answers\": [...]}) replace either.")
    ev.add_argument("--model", metavar="PATH",
                    help="local checkpoint folder (model + processor; never downloaded; "
                         "default: the built-in model)")
    ev.add_argument("--data", metavar="FILE.jsonl",
                    help="records to answer (default: generated scene questions)")
    ev.add_argument("--num-questions", type=_positive, default=200,
                    help="generated questions when there is no --data (default 200)")
    ev.add_argument("--seed", type=int, default=0,
                    help="seed of the generated questions (default 0)")
    ev.add_argument("--keep", type=_budget_list, default=None,
                    help="budgets per image, comma-separated: tokens (64,128) or fractions "
                         "(0.1,0.25) (default 6,12,24,48 for the built-in model, else "
                         "64,128,192)")
    ev.add_argument("--prompt", type=_prompt, default=None,
                    help="prompt template around the question, with {question} (default: "
                         "LLaVA-1.5's short-answer prompt); it goes through the processor's "
                         "chat template when it has one")
    ev.add_argument("--seeds", type=_seed_list, default=[0],
                    help="seeds for the random method, comma-separated; with several, the "
                         "report gives the spread (default 0)")
    ev.add_argument("--methods", type=_name_list, default=["greedyprune", "divprune", "topk",
                                                           "random"],
                    help="selectors, comma-separated (default greedyprune,divprune,topk,random)")
    ev.add_argument("--out", default="greedyprune-eval",
                    help="folder for summary.md, summary.csv, answers.csv, plot.png")
    ev.add_argument("--limit", type=_positive, help="use only the first N records")
    ev.add_argument("--max-new-tokens", type=_positive, default=16)
    ev.add_argument("--lam", type=float, default=None,
                    help="λ for greedyprune (default: attach's, 0: diversity only)")
    ev.add_argument("--saliency", default="text", choices=["text", "cls", "query", "none"],
                    help="saliency for greedyprune and topk (default text)")
    ev.add_argument("--device", help="default: cuda if available")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo

        demo.main(args.model, random_weights=args.random_weights, image=args.image,
                  question=args.question, seed=args.seed, keep=args.keep, methods=args.method,
                  out=args.out, size=args.model_size, device=args.device, repeats=args.repeats)
        return 0

    from . import evaluate
    from .demo import load_local

    if args.lam is not None and not 0.0 <= args.lam <= 1.0:
        parser.error(f"--lam: must be in [0, 1], got {args.lam}")
    if args.data is not None:
        try:
            records = evaluate.load_records(args.data, limit=args.limit)
        except (OSError, ValueError) as error:  # a bad data file is a usage error, not a crash
            parser.error(f"--data: {error}")
    else:
        from . import scenes

        if args.seed < 0:
            parser.error(f"--seed: must be a non-negative integer, got {args.seed}")
        records = scenes.benchmark(args.seed, args.num_questions)[:args.limit]
    if args.model is not None:
        model, processor = load_local(args.model, args.device)
        name = args.model
    else:
        from . import builtin

        model, processor = builtin.load(args.device)
        name = "built-in scenes model"
    keeps = args.keep or ([6, 12, 24, 48] if args.model is None else [64, 128, 192])
    prompt = {} if args.prompt is None else {"prompt": args.prompt}
    answerer = evaluate.HFAnswerer(model, processor, max_new_tokens=args.max_new_tokens,
                                   lam=args.lam, saliency=args.saliency, **prompt)
    report = evaluate.compare(answerer, records, args.methods, keeps, seeds=args.seeds,
                              progress=not args.no_progress, model=name)
    print(report.table())
    if report.categories():
        print("accuracy by category (agreement with the unpruned answer):")
        print(report.table_by_category())
    paths = report.save(args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
