"""``python -m greedyprune demo``: ask a trained model about a scene, pruned and unpruned, no download.

By default the model is the built-in one (:mod:`greedyprune.builtin`, a small LLaVA trained on
:mod:`greedyprune.scenes`): it answers a generated scene's question unpruned and with each
method, and the output shows the reference answer beside them. ``--model PATH`` runs the same on
a local checkpoint with its own processor, on a shipped photo unless ``--image`` says otherwise.

``--random-weights`` uses a LLaVA-1.5-architecture model with *random weights*, built from a
config, for timing at real sizes: a CLIP vision tower at 336 px with 14-px patches (576 visual
tokens, as in LLaVA-1.5), narrowed to 6 layers × 512, and a Llama decoder of 8 layers × 1024,
with a byte-level tokenizer built in code. Its answers are meaningless; the token counts,
prefill times and the kept-token picture are real. Its builders (:func:`random_llava`,
:func:`random_llava_processor`) also serve the tests, which pass ``size="tiny"`` for a model
that runs in milliseconds with the same 576 tokens.
"""
from __future__ import annotations

import inspect
import itertools
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .config import DEFAULT_SALIENCY, Saliency
from .report import Budget


DEFAULT_QUESTION = "What is the person in the picture wearing?"

#: Vision tower and decoder widths for the random-weight model, by size name.
SIZES: Dict[str, Dict[str, Dict[str, int]]] = {
    # The demo: LLaVA-1.5's token geometry (CLIP-L/14 at 336 px: 576 tokens), narrower towers so
    # that it runs in seconds on a laptop CPU while the decoder still dominates the prefill, as
    # in the real 7B model.
    "demo": dict(vision=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                             num_attention_heads=8),
                 text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                           num_attention_heads=16)),
    # For tests: the same 576 tokens, tiny widths.
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4)),
}

_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def sample_image_path() -> Path:
    """The photo shipped with the package (NASA portrait of Eileen Collins, public domain)."""
    return Path(str(resources.files("greedyprune") / "data" / "astronaut.jpg"))


def byte_tokenizer():
    """A byte-level tokenizer built in code: each UTF-8 byte is one token, plus the special
    tokens ``<unk> <s> </s> <pad> <image>`` (ids 0–4). Any text round-trips; no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})


def random_llava_processor():
    """A ``LlavaProcessor`` with LLaVA-1.5's image settings (CLIP normalization, shorter side
    resized to 336, centre crop 336) and :func:`byte_tokenizer`."""
    import transformers
    from transformers import LlavaProcessor

    # The PIL backend when it exists: the default one needs torchvision for no gain here.
    image_processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or \
        transformers.CLIPImageProcessor
    image_processor = image_processor_class(size={"shortest_edge": 336},
                                            crop_size={"height": 336, "width": 336})
    return LlavaProcessor(image_processor=image_processor, tokenizer=byte_tokenizer(),
                          patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)


def random_llava(size: str = "demo", seed: int = 0):
    """A LLaVA-1.5-architecture model with random weights (see :data:`SIZES`), in eval mode."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    widths = SIZES[size]
    vocab_size = len(_SPECIAL_TOKENS) + 256
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=336, patch_size=14,
                           projection_dim=widths["vision"]["hidden_size"], **widths["vision"]),
        text_config=dict(model_type="llama", vocab_size=vocab_size, max_position_embeddings=2048,
                         num_key_value_heads=widths["text"]["num_attention_heads"],
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, **widths["text"]),
        image_token_id=_SPECIAL_TOKENS.index("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    with _seeded(torch, seed):
        model = LlavaForConditionalGeneration(config)
    return model.eval()


def describe_random_llava(model) -> str:
    return (f"LLaVA-1.5 architecture with RANDOM weights, built from a config (no download): "
            f"{_geometry(model)}; byte-level tokenizer; {_millions(model):.0f}M parameters. "
            f"Its answers are meaningless; token counts, timings and the picture are real.")


def describe_builtin(model, task: str = "scenes") -> str:
    return (f"the built-in {task} model, a LLaVA trained from scratch on generated {task} "
            f"(shipped with the package): {_geometry(model)}; {_millions(model):.1f}M parameters")


def _geometry(model) -> str:
    vision, text = model.config.vision_config, model.config.text_config
    side = vision.image_size // vision.patch_size
    return (f"CLIP vision tower {vision.image_size} px / patch {vision.patch_size} "
            f"({side}x{side} = {side * side} visual tokens), {vision.num_hidden_layers} layers x "
            f"{vision.hidden_size}; Llama decoder {text.num_hidden_layers} layers x "
            f"{text.hidden_size}")


def _millions(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def load_local(path: str, device: Optional[str] = None, dtype: str = "auto"):
    """Model and processor from a local checkpoint folder (never the network)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


@dataclass
class PrunedRun:
    """One method's pruned run in the demo, at one budget (a token count or a fraction)."""

    method: str
    keep: Union[int, float]
    tokens_after: int
    sequence_after: int
    prefill_seconds: float
    hook_seconds: float
    answer: str


@dataclass
class DemoResult:
    tokens_before: int
    sequence_before: int
    prefill_unpruned: float
    answer_unpruned: str
    pruned: List[PrunedRun]
    picture: Optional[Path]
    reference: Optional[str] = None

    def speedup(self, method: str, keep: Optional[Union[int, float]] = None) -> float:
        """Unpruned over pruned prefill time for ``method`` at ``keep`` (default: its first
        budget)."""
        run = next(r for r in self.pruned if r.method == method and keep in (None, r.keep))
        return self.prefill_unpruned / run.prefill_seconds


def run(model, processor, *, image: Any = None, question: str = DEFAULT_QUESTION,
        keep: Union[Budget, Sequence[Budget], None] = None,
        methods: Sequence[str] = ("greedyprune",),
        lam: Optional[Union[float, str]] = None, saliency: Saliency = DEFAULT_SALIENCY,
        out: Optional[str] = "greedyprune-demo.png", repeats: int = 3, max_new_tokens: int = 8,
        reference: Optional[str] = None, scale: int = 2, print_fn=print,
        keeps: Optional[Sequence[Budget]] = None) -> DemoResult:
    """Time the prefill unpruned and pruned by each method at each budget in ``keep`` (one or
    several token counts or fractions, as in :func:`greedyprune.evaluate.compare`; default 64;
    ``keeps``, its former name, still works and warns), answer every way, draw the kept tokens
    of the first method at the first budget."""
    import torch

    from .evaluate import HFAnswerer, budget_arguments, budgets, device_synchronizer
    from .hf import attach
    from .viz import draw_record

    keeps = budgets(keep, keeps, "run", default=(64,))
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    image = sample_image_path() if image is None else image
    answerer = HFAnswerer(model, processor, max_new_tokens=max_new_tokens, prompt="{question}",
                          lam=lam, saliency=saliency)
    lam = answerer.attach_options["lam"]
    inputs = answerer.inputs(image, question)
    sequence_before = int(inputs["input_ids"].shape[1])

    sync = device_synchronizer(model)
    # A prefill as generate() runs it: the cache is built, logits only for the last position.
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
        model.forward).parameters else {}

    def prefill_seconds() -> float:
        sync()
        start = time.perf_counter()
        model(**inputs, **extra)
        sync()
        return time.perf_counter() - start

    # Side by side: each round times the unpruned prefill and every setting once, so that a
    # burst of load on the machine hits them alike (round 0 warms up allocators and kernels).
    # Each gets its best round: the cost of the work itself, least disturbed by other jobs.
    settings = list(itertools.product(methods, keeps))
    times: Dict[Any, List[float]] = {setting: [] for setting in [None, *settings]}
    records: Dict[Any, Any] = {}
    with torch.inference_mode():
        for round_number in range(repeats + 1):
            for setting in times:
                if setting is None:
                    seconds = prefill_seconds()
                else:
                    method, budget = setting
                    with attach(model, **budget_arguments(budget), method=method, lam=lam,
                                saliency=saliency) as handle:
                        seconds = prefill_seconds()
                    records[setting] = handle.last_prefill
                if round_number:
                    times[setting].append(seconds)

    unpruned = min(times[None])
    answer_unpruned = answerer(image, question).text
    _print_header(reference, answer_unpruned, unpruned, repeats, print_fn)
    runs, picture, tokens_before = [], None, 0
    for number, (method, budget) in enumerate(settings):
        record = records[method, budget]
        if record is None:
            raise RuntimeError(f"{type(model).__name__}'s prefill did not reach the pruning hook")
        entry = record.images[0]
        result = PrunedRun(method, budget, sum(i.tokens_after for i in record.images),
                           int(record.seq_len_after), min(times[method, budget]),
                           record.hook_seconds, answerer(image, question, method, budget).text)
        runs.append(result)
        tokens_before = sum(i.tokens_before for i in record.images)
        _print_run(result, tokens_before, sequence_before, unpruned, lam, saliency, print_fn)
        if out and number == 0:
            title = (f"{method}: {entry.tokens_after} of {entry.tokens_before} visual tokens kept"
                     + (" (numbered in pick order)" if entry.order is not None else ""))
            drawing = draw_record(image, entry, scale=scale, title=title)
            picture = Path(out)
            picture.parent.mkdir(parents=True, exist_ok=True)
            drawing.save(picture)
    if picture is not None:
        print_fn(f"picture:  {picture} (kept patches bright and outlined, pruned ones dimmed)")
    return DemoResult(tokens_before=tokens_before,
                      sequence_before=sequence_before, prefill_unpruned=unpruned,
                      answer_unpruned=answer_unpruned, pruned=runs, picture=picture,
                      reference=reference)


def _print_header(reference, answer, seconds, repeats, print_fn) -> None:
    if reference is not None:
        print_fn(f"reference answer: {reference}")
    print_fn(f"unpruned: answer {ascii(answer)}, prefill {seconds * 1e3:.1f} ms "
             f"(best of {repeats} rounds, each timing every setting in turn)")


def _print_run(r: PrunedRun, before, sequence_before, unpruned, lam, saliency,
               print_fn) -> None:
    print_fn(f"pruning:  method={r.method}, keep={r.keep}, lam={lam}, saliency={saliency}")
    print_fn(f"  visual tokens: {before} -> {r.tokens_after}   "
             f"(sequence: {sequence_before} -> {r.sequence_after} tokens)")
    print_fn(f"  prefill: {r.prefill_seconds * 1e3:.1f} ms, speed-up "
             f"{unpruned / r.prefill_seconds:.2f}x over unpruned (the pruning hook itself: "
             f"{r.hook_seconds * 1e3:.1f} ms)")
    print_fn(f"  answer:  {ascii(r.answer)}")


class _seeded:
    """Seed torch's global generator inside the block and restore its state afterwards."""

    def __init__(self, torch, seed: int) -> None:
        self.torch, self.seed = torch, seed

    def __enter__(self) -> None:
        self.state = self.torch.random.get_rng_state()
        self.torch.manual_seed(self.seed)

    def __exit__(self, *exc) -> None:
        self.torch.random.set_rng_state(self.state)


def main(model_path: Optional[str] = None, *, random_weights: bool = False,
         image: Optional[str] = None, question: Optional[str] = None, seed: int = 0,
         keep: Optional[Sequence[Budget]] = None,
         methods: Optional[Sequence[str]] = None, lam: Optional[Union[float, str]] = None,
         saliency: Saliency = DEFAULT_SALIENCY, out: str = "greedyprune-demo.png",
         size: str = "demo",
         device: Optional[str] = None, repeats: int = 3, task: str = "scenes",
         print_fn=print) -> DemoResult:
    """The ``demo`` command: a built-in model on a generated picture of its ``task`` (default),
    a local checkpoint (``model_path``) or a random-weight model (``random_weights``, or the
    test-only ``size="tiny"``) on a shipped photo; then :func:`run`."""
    start = time.perf_counter()
    reference, scale = None, 2
    if model_path is None and not random_weights and size == "demo":
        from . import builtin

        model, processor = builtin.load(task, device)
        print_fn(f"model:    {describe_builtin(model, task)}")
        if image is None:
            kinds = builtin.task(task).CATEGORIES
            record = builtin.task(task).benchmark(seed, len(kinds))[seed % len(kinds)]
            image, question = record.image, question or record.question
            reference = record.answers[0] if record.answers else None
            print_fn(f"image:    a generated {task} picture (seed {seed}; --seed picks another)")
        else:
            print_fn(f"image:    {image}")
        question = question or "How many circles are there?"
        keep = keep or [16]
        methods = methods or ["greedyprune", "divprune", "random"]
        scale = 3
    else:
        if model_path is None:
            model, processor = random_llava(size).to(device or "cpu"), random_llava_processor()
            print_fn(f"model:    {describe_random_llava(model)}")
        else:
            model, processor = load_local(model_path, device)
            print_fn(f"model:    {model_path} ({type(model).__name__}, local files only)")
        shown = image or (f"{sample_image_path()} (NASA photo of astronaut Eileen Collins, "
                          "public domain)")
        print_fn(f"image:    {shown}")
        question = question or DEFAULT_QUESTION
        keep = keep or [64]
        methods = methods or ["greedyprune"]
    print_fn(f"question: {question}")
    result = run(model, processor, image=image, question=question, keep=keep,
                 methods=methods, lam=lam, saliency=saliency, out=out, repeats=repeats,
                 reference=reference, scale=scale, print_fn=print_fn)
    print_fn(f"done in {time.perf_counter() - start:.1f} s")
    return result


