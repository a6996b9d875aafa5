"""Command line: ``greedyprune demo`` and ``greedyprune eval`` (or ``python -m greedyprune ...``).

``demo`` asks the built-in model (:mod:`greedyprune.builtin`) a question about a generated scene
and answers it unpruned and pruned by each method, printing the answers, token counts and
prefill times and writing a picture of the kept patches; ``--model PATH`` does the same with a
local checkpoint and ``--random-weights`` with a LLaVA-1.5-sized model of random weights (for
timing at real sizes). ``eval`` compares answers with and without pruning, per method and
budget (see :mod:`greedyprune.evaluate`): by default the built-in model on generated scene
questions, or a local model (``--model``) on a JSONL file (``--data``).

Both commands take the same model and pruning options, defined once here
(:func:`_add_model_options`, :func:`_add_pruning_options`). Every option is checked while the
command line is parsed, or right after for checks that span several options, so that a mistake
is reported (argparse's ``usage: ... error: ...``, exit status 2) before any model is loaded.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

from . import __version__

#: The methods ``eval`` compares when ``--methods`` is not given.
EVAL_METHODS = ["greedyprune", "divprune", "topk", "random"]


# --- option types: each turns one option's text into its value, or refuses it -----------------


def _comma_list(text: str, parse_item: Callable[[str], object]) -> list:
    """The comma-separated items of ``text``, each through ``parse_item`` (which raises
    ValueError with the message to show); at least one, none repeated."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    try:
        values = [parse_item(item) for item in items]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(repeated)} given more than once in "
                                         f"{text!r}")
    return values


def _budget(item: str) -> Union[int, float]:
    for number in (int, float):
        try:
            return number(item)
        except ValueError:
            pass
    raise ValueError(f"expected token counts (64,128) or fractions (0.1,0.25), got {item!r}")


def _budget_list(text: str) -> List[Union[int, float]]:
    """Token counts ("64,128") or fractions ("0.1,0.25")."""
    from .evaluate import check_keep

    try:
        return check_keep(_comma_list(text, _budget))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _method_name(item: str) -> str:
    from . import methods

    methods.get(item)  # ValueError naming the known methods
    return item


def _method_list(text: str) -> List[str]:
    return _comma_list(text, _method_name)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"expected a non-negative integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        return _non_negative(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seed_list(text: str) -> List[int]:
    return _comma_list(text, _non_negative)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _lam_item(text: str) -> Union[float, str]:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected numbers in [0, 1] or auto, got {text!r}")
    return value


def _lam_list(text: str) -> List[Union[float, str]]:
    """λ values in [0, 1] or auto, comma-separated."""
    return _comma_list(text, _lam_item)


def _saliency_item(text: str) -> str:
    from .config import SALIENCY

    if text not in SALIENCY:
        raise ValueError(f"expected saliency kinds from {', '.join(SALIENCY)}, got {text!r}")
    return text


def _saliency_list(text: str) -> List[str]:
    return _comma_list(text, _saliency_item)


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected some text, got an empty string")
    return text


def _prompt(text: str) -> str:
    if "{question}" not in text:
        raise argparse.ArgumentTypeError(f"the prompt must contain {{question}}, got {text!r}")
    try:
        text.format(question="")
    except (KeyError, IndexError, ValueError):
        raise argparse.ArgumentTypeError(
            f"the prompt may hold no braces but {{question}} (write {{{{ and }}}} for literal "
            f"ones), got {text!r}") from None
    return text


#: How the Hugging Face Hub names a model: "owner/name".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def _checkpoint(text: str) -> str:
    """A local checkpoint folder; a Hub id gets a message on how to download it."""
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise argparse.ArgumentTypeError(f"{text!r} is not a checkpoint folder: it has no "
                                             "config.json")
        return str(path)
    if path.exists():
        raise argparse.ArgumentTypeError(f"expected a checkpoint folder, got the file {text!r}")
    message = (f"no folder {text!r}: only local checkpoint folders are read (nothing is "
               "downloaded)")
    if _HUB_ID.fullmatch(text):
        message += (f". To use the Hugging Face Hub model {text}, download it first: "
                    f"hf download {text} --local-dir DIR (or huggingface-cli download {text} "
                    f"--local-dir DIR), then pass --model DIR")
    raise argparse.ArgumentTypeError(message)


def _image_file(text: str) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(Path(text).expanduser()):
            pass
    except (FileNotFoundError, IsADirectoryError):
        raise argparse.ArgumentTypeError(f"no image file {text!r}") from None
    except UnidentifiedImageError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image file Pillow can read") \
            from None
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {error.strerror or error}") \
            from None
    return str(Path(text).expanduser())


def _picture_file(text: str) -> str:
    """A file name for a picture: a suffix Pillow can write, not an existing folder."""
    from PIL import Image

    Image.init()
    if Image.registered_extensions().get(Path(text).suffix.lower()) not in Image.SAVE:
        raise argparse.ArgumentTypeError(f"expected a picture file name such as demo.png or "
                                         f"demo.jpg, got {text!r}")
    _check_place(Path(text), folder=False)
    return text


def _output_folder(text: str) -> str:
    _check_place(Path(text), folder=True)
    return text


def _check_place(path: Path, folder: bool) -> None:
    """``path`` can be written as a file (or created as a folder): nothing of the other kind is
    in the way."""
    if path.exists() and path.is_dir() != folder:
        kind = "file" if path.is_file() else "folder"
        raise argparse.ArgumentTypeError(f"{str(path)!r} is a {kind}; expected "
                                         f"{'a folder' if folder else 'a file name'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"cannot write {str(path)!r}: "
                                                 f"{str(parent)!r} is a file")
            return


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1, got "
                                         f"{text!r}") from None
    backend: Any = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(backend, "is_available"):
        if not backend.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: no {device.type} device on this "
                                             "machine")
        count = backend.device_count() if hasattr(backend, "device_count") else None
        if device.index is not None and count is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} "
                                             f"{device.type} device(s), numbered from 0")
    return text


# --- the parser ---------------------------------------------------------------------------------


def _prog() -> str:
    """The command as it was invoked: ``python -m greedyprune`` (with the interpreter's own
    name) when run as a module, else the script's name (``greedyprune``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name == f"{__package__}.__main__":
        return f"{Path(sys.executable).name or 'python'} -m {__package__}"
    return Path(sys.argv[0]).name or __package__


def _add_model_options(parser, group=None) -> None:
    """``--task``, ``--model`` (into ``group`` when given) and ``--device``."""
    from . import builtin

    parser.add_argument(
        "--task", choices=list(builtin.TASKS),
        help=f"built-in task: its model and its generated questions (default "
             f"{next(iter(builtin.TASKS))}; crowds: 12-16 mostly small objects on a background "
             "of several regions, more than a small budget can keep)")
    (group or parser).add_argument(
        "--model", metavar="PATH", type=_checkpoint,
        help="local checkpoint folder (model and processor files, as save_pretrained writes "
             "them; nothing is downloaded) instead of the built-in model")
    parser.add_argument(
        "--device", type=_device,
        help="where the model runs, e.g. cpu, cuda, cuda:1 (default: the CPU for the built-in "
             "and random-weight models, cuda when available for --model)")


def _add_pruning_options(parser, *, methods_default: str, keep_default: str) -> None:
    """``--methods``, ``--keep``, ``--lam``, ``--saliency``: the same options in every command;
    defaults that depend on the command are None here and described by the two strings.
    ``--lam`` and ``--saliency`` are lists (a sweep) for ``eval``; ``demo`` takes one value of
    each."""
    from . import methods
    from .hf import DEFAULT_LAM, DEFAULT_SALIENCY, SALIENCY

    parser.add_argument(
        "--methods", "--method", dest="methods", metavar="NAMES", type=_method_list,
        help=f"selectors, comma-separated, from {', '.join(methods.names())} "
             f"(default {methods_default})")
    parser.add_argument(
        "--keep", metavar="BUDGETS", type=_budget_list,
        help="visual tokens kept per image, comma-separated: token counts (64,128) or "
             f"fractions of each image's tokens (0.1,0.25) (default {keep_default})")
    parser.add_argument(
        "--lam", metavar="LAMS", type=_lam_list,
        help="weight of saliency against diversity for greedyprune, in [0, 1], or auto (by the "
             "kept fraction of each image's tokens); eval takes a comma-separated list and runs "
             f"each (default {DEFAULT_LAM})")
    parser.add_argument(
        "--saliency", metavar="KINDS", type=_saliency_list,
        help=f"where each token's relevance comes from ({', '.join(SALIENCY)}), for greedyprune "
             "(when --lam > 0), topk and cdpruner; none: diversity only; eval takes a "
             "comma-separated list and runs every --lam with each, beside the other methods "
             f"(default {DEFAULT_SALIENCY})")


def build_parser() -> argparse.ArgumentParser:
    """The parser of both commands, named as the command was invoked."""
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Training-free visual-token pruning for vision-language models.")
    parser.add_argument("--version", action="version", version=f"greedyprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="what to run; COMMAND -h lists its options")

    demo = commands.add_parser(
        "demo", help="ask the built-in model about a generated scene, pruned and unpruned",
        description="Ask the built-in model (a small LLaVA trained on generated scenes, shipped "
                    "with the package) a question about a generated scene; answer it unpruned "
                    "and with each method and budget; print the answers, tokens before/after "
                    "and prefill times; write a picture of the patches kept by the first "
                    "method at the first budget. --model runs a local checkpoint instead; "
                    "--random-weights a LLaVA-1.5-sized model with random weights (576 visual "
                    "tokens), for timing at real sizes.")
    source = demo.add_mutually_exclusive_group()
    _add_model_options(demo, source)
    source.add_argument("--random-weights", action="store_true",
                      help="a LLaVA-1.5-sized model with random weights on a shipped photo: "
                           "real timings, meaningless answers")
    _add_pruning_options(
        demo, methods_default="greedyprune,divprune,random with the built-in model, else "
                              "greedyprune",
        keep_default="16 of the built-in model's 144, else 64")
    demo.add_argument("--image", metavar="PATH", type=_image_file,
                      help="image file (default: a generated scene, or the shipped photo)")
    demo.add_argument("--question", type=_text, help="question about the image")
    demo.add_argument("--seed", type=_seed, default=0,
                      help="which generated scene and question (default 0)")
    demo.add_argument("--out", default="greedyprune-demo.png", type=_picture_file,
                      help="picture to write (default greedyprune-demo.png)")
    demo.add_argument("--repeats", type=_positive, default=3,
                      help="timed prefills per setting; the fastest is shown (default 3)")
    # For the test suite: the same 576 tokens in a model that runs in milliseconds.
    demo.add_argument("--model-size", default="demo", choices=["demo", "tiny"],
                      help=argparse.SUPPRESS)
    demo.set_defaults(error=demo.error)

    ev = commands.add_parser(
        "eval", help="compare a model's answers with and without pruning",
        description="Answer every record unpruned and with each method and budget; report VQA "
                    "accuracy (per question category too, when records have one), agreement "
                    "with the unpruned answer and prefill time as tables, CSV files and a plot. "
                    "By default the built-in model answers --num-questions generated scene "
                    "questions; --model and --data (a JSONL file of {\"image\": ..., "
                    "\"question\": ..., \"answers\": [...]}) replace either.")
    _add_model_options(ev)
    _add_pruning_options(
        ev, methods_default=",".join(EVAL_METHODS),
        keep_default="6,12,24,48 for the built-in model, else 64,128,192")
    ev.add_argument("--data", metavar="FILE.jsonl",
                    help="records to answer (default: generated scene questions)")
    ev.add_argument("--num-questions", type=_positive, default=200,
                    help="generated questions when there is no --data (default 200)")
    ev.add_argument("--seed", type=_seed, default=0,
                    help="seed of the generated questions (default 0)")
    ev.add_argument("--prompt", type=_prompt, default=None,
                    help="prompt template around the question, with {question} (default: "
                         "LLaVA-1.5's short-answer prompt); it goes through the processor's "
                         "chat template when it has one")
    ev.add_argument("--seeds", type=_seed_list, default=[0],
                    help="seeds for the random method, comma-separated; with several, the "
                         "report gives the spread (default 0)")
    ev.add_argument("--out", default="greedyprune-eval", type=_output_folder,
                    help="folder for summary.md, summary.csv, answers.csv, settings.json and "
                         "plot.png (default greedyprune-eval)")
    ev.add_argument("--limit", type=_positive, help="use only the first N records")
    ev.add_argument("--max-new-tokens", type=_positive, default=16,
                    help="longest answer, in tokens (default 16)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(error=ev.error)
    return parser


def _check_pruning(args: argparse.Namespace, methods: List[str]) -> None:
    """Checks that span options: what --saliency none allows; one --lam and one --saliency in
    the demo; --task only where a built-in model or generated questions are used."""
    from . import methods as registry

    if args.task is not None and args.model is not None and getattr(args, "data", None):
        args.error("argument --task: has no effect with both --model and --data")
    if args.command == "demo":
        for name in ("lam", "saliency"):
            if getattr(args, name) is not None and len(getattr(args, name)) > 1:
                args.error(f"argument --{name}: demo takes one value; eval compares several")
    if args.saliency != ["none"]:
        return
    if args.lam and any(v not in (0, "auto") for v in args.lam):
        args.error(f"argument --lam: has no effect with --saliency none (diversity only), "
                   f"got {','.join(str(v) if v == 'auto' else f'{v:g}' for v in args.lam)}")
    needy = [name for name in methods if registry.needs_saliency(name)]
    if needy:
        args.error(f"argument --saliency: method {', '.join(needy)} needs saliency; choose "
                   f"text, cls or query, or leave {', '.join(needy)} out of --methods")


def _check_builtin(args: argparse.Namespace, task: str) -> None:
    """The task's built-in model is in this installation (where no --model replaces it)."""
    from . import builtin

    if args.model is None and not getattr(args, "random_weights", False):
        try:
            builtin.path(task)
        except FileNotFoundError as error:
            args.error(f"argument --task: {error}; or pass --model")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from . import demo

        from .hf import DEFAULT_SALIENCY

        _check_pruning(args, args.methods or [])
        if args.task is not None and (args.model is not None or args.random_weights):
            args.error("argument --task: picks a built-in model; it has no effect with "
                       + ("--model" if args.model is not None else "--random-weights"))
        _check_builtin(args, args.task or "scenes")
        demo.main(args.model, random_weights=args.random_weights, image=args.image,
                  question=args.question, seed=args.seed, keep=args.keep,
                  methods=args.methods, lam=(args.lam or [None])[0],
                  saliency=(args.saliency or [DEFAULT_SALIENCY])[0], out=args.out,
                  size=args.model_size, device=args.device, repeats=args.repeats,
                  task=args.task or "scenes")
        return 0

    from . import evaluate

    methods = args.methods or EVAL_METHODS
    _check_pruning(args, methods)
    task = args.task or "scenes"
    _check_builtin(args, task)
    if args.data is not None:
        try:
            records = evaluate.load_records(args.data, limit=args.limit)
        except (OSError, ValueError) as error:  # a bad data file is a usage error, not a crash
            args.error(f"argument --data: {error}")
    else:
        from . import builtin

        records = builtin.task(task).benchmark(args.seed, args.num_questions)[:args.limit]
    if args.model is not None:
        from .demo import load_local

        model, processor = load_local(args.model, args.device)
        name = args.model
    else:
        from . import builtin

        model, processor = builtin.load(task, args.device)
        name = f"built-in {task} model"
    keep = args.keep or ([6, 12, 16, 24, 48] if args.model is None else [64, 128, 192])
    prompt = {} if args.prompt is None else {"prompt": args.prompt}
    # One λ and one saliency configure the answerer (the report names the methods alone);
    # several make a sweep, each configuration labelled with its values.
    sweep = len(args.lam or []) > 1 or len(args.saliency or []) > 1
    single = {} if sweep else {"lam": (args.lam or [None])[0],
                               **({"saliency": args.saliency[0]} if args.saliency else {})}
    answerer = evaluate.HFAnswerer(model, processor, max_new_tokens=args.max_new_tokens,
                                   **single, **prompt)
    swept = {"lam": args.lam, "saliency": args.saliency} if sweep else {}
    report = evaluate.compare(answerer, records, methods, keep, seeds=args.seeds,
                              progress=not args.no_progress, model=name, **swept)
    print(report.table())
    if report.categories():
        print("accuracy by category (agreement with the unpruned answer):")
        print(report.table_by_category())
    paths = report.save(args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
