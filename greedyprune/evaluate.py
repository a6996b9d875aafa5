"""Compare answers with and without pruning: accuracy, agreement and prefill time per method.

The question users ask before trusting a pruning method is "does my model still answer my
questions the same way?". This module answers it on their own data::

    from greedyprune.evaluate import HFAnswerer, compare, load_records
    answerer = HFAnswerer(model, processor)
    report = compare(answerer, load_records("cases.jsonl"), methods=["greedyprune", "random"],
                     keep=[64, 128, 192])
    print(report.table())            # markdown; report.table("csv") for CSV
    report.plot("accuracy.png")      # accuracy (or agreement) vs kept tokens: a Figure, saved
    report.save("results/")          # table, per-answer CSV and plot
    report.to_pandas()               # the summary as a DataFrame (in a notebook, the report
                                     # itself shows as its table)

For each record (an image, a question, optionally reference answers) the model answers once
unpruned and once per (method, budget). Each answer is scored by

- **accuracy** against the references, VQA-style: answers are normalized (:func:`normalize_answer`)
  and an answer scores ``min(#matching references / min(3, #references), 1)`` — the VQA accuracy
  ``min(#matches / 3, 1)`` for the usual 10 references, exact match for a single reference;
- **agreement** with the unpruned answer (normalized exact match);
- **prefill time**: the wall time of the first forward pass of generation (the vision tower, the
  pruning hook and the language model over the prompt).

The model side is one small interface, an *answerer*: ``answerer(image, question, method, keep)
-> Answer``, with ``method=None`` meaning unpruned. :class:`HFAnswerer` implements it for a
HuggingFace model and processor through :func:`greedyprune.hf.attach`; tests and other
frameworks can pass any callable. :mod:`greedyprune.testing` turns the same comparison into a
pytest assertion. The command line is ``python -m greedyprune eval``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .report import UNPRUNED, Budget, Report, Result, budget_arguments

__all__ = ["Answer", "HFAnswerer", "Record", "Report", "Result", "Setting", "UNPRUNED", "sweep",
           "budget_arguments", "compare", "load_records", "normalize_answer", "vqa_accuracy"]

#: LLaVA-1.5's prompt for short-answer VQA (its VQAv2 / GQA evaluation prompt).
SHORT_ANSWER_PROMPT = "{question}\nAnswer the question using a single word or phrase."

#: Methods whose picks depend on the seed: :func:`compare` runs them once per seed.
SEEDED_METHODS = ("random",)


# --- answer normalization and scoring ---------------------------------------------------------

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16",
    "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
}
_ARTICLES = {"a", "an", "the"}
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_PUNCTUATION = re.compile(r"[^\w\s.']|_")


def normalize_answer(text: str) -> str:
    """VQA-style normalization, so that "Two dogs." and "2 dogs" compare equal.

    Lowercase; drop thousands separators ("1,000" → "1000"), periods that are not decimal
    points, apostrophes ("don't" = "dont") and other punctuation (replaced by a space, so that
    "t-shirt" = "t shirt"); number words up to twenty become digits ("none" → "0", as in the
    VQA evaluation); drop the articles a, an, the; collapse whitespace.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    text = text.lower().replace("\n", " ").replace("\t", " ")
    text = _THOUSANDS_COMMA.sub("", text)
    text = _NON_DECIMAL_PERIOD.sub("", text)
    text = text.replace("'", "")
    text = _PUNCTUATION.sub(" ", text)
    words = [_NUMBER_WORDS.get(word, word) for word in text.split()]
    return " ".join(word for word in words if word not in _ARTICLES)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """``min(#references equal to the prediction / min(3, #references), 1)``, after
    :func:`normalize_answer`: the VQA accuracy with 3 or more references, exact match with one."""
    references = [references] if isinstance(references, str) else list(references)
    if not references:
        raise ValueError("references must hold at least one answer")
    answer = normalize_answer(prediction)
    matches = sum(answer == normalize_answer(ref) for ref in references)
    return min(matches / min(3, len(references)), 1.0)


# --- data -------------------------------------------------------------------------------------


@dataclass
class Record:
    """One case: an image (path or PIL image), a question, optional reference answers, and an
    optional category (a question type) that reports break accuracy down by."""

    image: Any
    question: str
    answers: Optional[List[str]] = None
    id: str = ""
    category: str = ""


def load_records(path: Union[str, Path], limit: Optional[int] = None) -> List[Record]:
    """Read a JSONL file, one case per line: ``{"image": "cat.jpg", "question": "...",
    "answers": ["cat", ...]}``. ``answers`` (or a single ``answer``) and ``id`` are optional;
    relative image paths are relative to the file's folder. Blank lines are skipped."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
            missing = [key for key in ("image", "question") if not item.get(key)]
            if missing:
                raise ValueError(f"{where}: missing {' and '.join(missing)}")
            answers = item.get("answers", item.get("answer"))
            if isinstance(answers, str):
                answers = [answers]
            if answers is not None and (not isinstance(answers, list) or not answers or
                                        not all(isinstance(a, str) for a in answers)):
                raise ValueError(f"{where}: answers must be a non-empty list of strings")
            image = Path(item["image"]).expanduser()
            if not image.is_absolute():
                image = path.parent / image
            if not image.exists():
                raise ValueError(f"{where}: image {str(image)!r} does not exist")
            records.append(Record(image=str(image), question=str(item["question"]),
                                  answers=answers, id=str(item.get("id", number))))
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise ValueError(f"{path}: no records")
    return records


# --- answering --------------------------------------------------------------------------------


@dataclass
class Answer:
    """What an answerer returns: the text, and optionally the prefill time and token counts
    (visual tokens of the prompt before and after pruning, summed over its images)."""

    text: str
    prefill_seconds: Optional[float] = None
    tokens_before: Optional[int] = None
    tokens_after: Optional[int] = None


#: ``answerer(image, question, method, keep, **options) -> Answer``; ``method=None``:
#: unpruned. ``options`` (``lam``, ``saliency``, ``seed``) are passed only by a :class:`Setting`
#: that sets them, or for a seeded method compared over several seeds.
Answerer = Callable[..., Answer]


@dataclass(frozen=True)
class Setting:
    """A pruning configuration to compare: a method and, optionally, the ``lam`` and
    ``saliency`` it runs with (None: the answerer's own). ``label`` names it in reports
    (default: the method, followed by the options that are set)."""

    method: str
    lam: Optional[Union[float, str]] = None
    saliency: Optional[str] = None
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        options = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{self.method}({options})" if options else self.method

    def options(self) -> Dict[str, Any]:
        """The options this setting passes to the answerer."""
        return {k: v for k, v in (("lam", self.lam), ("saliency", self.saliency)) if v is not None}



class PrefillTimer:
    """Times the first forward call of a module inside the ``with`` block: the prefill of a
    ``generate()`` call. Hooks are removed on exit."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.seconds: Optional[float] = None
        self._start: Optional[float] = None
        self._handles: list = []

    def __enter__(self) -> "PrefillTimer":
        sync = device_synchronizer(self.module)

        def before(module, args):
            if self._start is None:
                sync()
                self._start = time.perf_counter()

        def after(module, args, output):
            if self.seconds is None and self._start is not None:
                sync()  # an accelerator runs asynchronously: wait for the work to finish
                self.seconds = time.perf_counter() - self._start

        self._handles = [self.module.register_forward_pre_hook(before),
                         self.module.register_forward_hook(after)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def device_synchronizer(model: Any) -> Callable[[], None]:
    """A function that waits for the model's accelerator to finish queued work (a no-op on
    the CPU), so that wall-clock timings measure the work, not its launch."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    synchronize = getattr(getattr(torch, device.type, None), "synchronize", None)
    if device.type != "cpu" and synchronize is not None:
        return lambda: synchronize(device)
    return lambda: None


class HFAnswerer:
    """Answers with a HuggingFace vision-language model and its processor, pruning through
    :func:`greedyprune.hf.attach` (greedy decoding, batch of one).

    ``prompt`` formats the question (default: LLaVA-1.5's short-answer prompt). It goes through
    the processor's chat template when it has one, else into LLaVA-1.5's ``USER: <image>\\n...
    ASSISTANT:`` format. ``lam``, ``saliency`` and ``seed`` go to ``attach``; a float ``keep``
    below 1 is a ``keep_ratio``.
    """

    def __init__(self, model: Any, processor: Any, *, max_new_tokens: int = 16,
                 prompt: str = SHORT_ANSWER_PROMPT, lam: Optional[Union[float, str]] = None,
                 saliency: Optional[str] = None,
                 seed: int = 0) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.prompt = prompt
        from .config import DEFAULT_LAM, DEFAULT_SALIENCY

        # attach's defaults, spelled out so that reprs and reports show them
        lam = DEFAULT_LAM if lam is None else lam
        saliency = DEFAULT_SALIENCY if saliency is None else saliency
        self.attach_options: Dict[str, Any] = dict(lam=lam, saliency=saliency, seed=seed)
        self.last: tuple = ()

    def __repr__(self) -> str:
        return (f"HFAnswerer({type(self.model).__name__}, max_new_tokens={self.max_new_tokens}, "
                f"{', '.join(f'{k}={v!r}' for k, v in self.attach_options.items())})")

    def inputs(self, image: Any, question: Union[str, Sequence[str]]) -> Any:
        """The processor's tensors for one (image, question), or for lists of images and
        questions (a left-padded batch), on the model's device."""
        images = [image] if isinstance(question, str) else list(image)
        questions = [question] if isinstance(question, str) else list(question)
        tokenizer: Any = getattr(self.processor, "tokenizer", None)
        side = getattr(tokenizer, "padding_side", None)
        if side is not None:
            tokenizer.padding_side = "left"  # generation continues every row at its end
        try:
            inputs = self.processor(images=[_load_image(i) for i in images],
                                    text=[self._prompt(q) for q in questions],
                                    return_tensors="pt", padding=True)
        finally:
            if side is not None:
                tokenizer.padding_side = side
        return inputs.to(self.model.device)

    def _prompt(self, question: str) -> str:
        text = self.prompt.format(question=question)
        processor = self.processor
        if getattr(processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"},
                                                         {"type": "text", "text": text}]}]
            return processor.apply_chat_template(conversation, add_generation_prompt=True)
        token = getattr(processor, "image_token", "<image>")
        return f"USER: {token}\n{text} ASSISTANT:"

    def __call__(self, image: Any, question: str, method: Optional[str] = None,
                 keep: Optional[Union[int, float]] = None, **options: Any) -> Answer:
        """Answer one question; ``options`` (``lam``, ``saliency``, ``seed``) override the
        answerer's own for this call."""
        return self._answer(image, question, method, keep, options)[0]

    def answer_batch(self, images: Sequence[Any], questions: Sequence[str],
                     method: Optional[str] = None, keep: Optional[Union[int, float]] = None,
                     **options: Any) -> List[Answer]:
        """Answer several questions in one left-padded ``generate()`` call (the budget applies
        to each image). Much faster than one by one; the answers are the same, but
        ``prefill_seconds`` is the whole batch's prefill, so :func:`compare` leaves it out."""
        if len(images) != len(questions) or not questions:
            raise ValueError("images and questions must be non-empty and of equal length, got "
                             f"{len(images)} and {len(questions)}")
        return self._answer(images, list(questions), method, keep, options)

    def _answer(self, image, question, method, keep, options) -> List[Answer]:
        import torch

        unknown = set(options) - set(self.attach_options)
        if unknown:
            raise TypeError(f"unexpected options {sorted(unknown)}; HFAnswerer takes "
                            f"{', '.join(self.attach_options)}")
        inputs = self.inputs(image, question)
        handle = None
        with contextlib.ExitStack() as stack:
            if method is not None:
                from .hf import attach

                attach_options = {**self.attach_options, **options}
                if attach_options["saliency"] == "none":  # λ has no effect there: say nothing
                    attach_options["lam"] = 0.0
                handle = stack.enter_context(attach(self.model, method=method,
                                                    **budget_arguments(keep), **attach_options))
            timer = stack.enter_context(PrefillTimer(self.model))
            stack.enter_context(torch.inference_mode())
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                         do_sample=False)
        prompt_length = inputs["input_ids"].shape[1]
        texts = [t.strip() for t in self.processor.batch_decode(output[:, prompt_length:],
                                                                 skip_special_tokens=True)]
        #: The kept-token records of the last call (``handle.last``; empty when unpruned).
        self.last = tuple(handle.last) if handle is not None and handle.last else ()
        answers = []
        for row, text in enumerate(texts):
            before = after = visual_token_count(self.model, inputs["input_ids"][row])
            if self.last:
                before = sum(r.tokens_before for r in self.last if r.row == row)
                after = sum(r.tokens_after for r in self.last if r.row == row)
            answers.append(Answer(text, timer.seconds, before, after))
        return answers


def visual_token_count(model: Any, input_ids: Any) -> Optional[int]:
    """Image placeholder tokens in ``input_ids`` (None if the model's image token is unknown)."""
    config = model.config
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = getattr(config, "image_token_index", None)
    return None if token is None else int((input_ids == token).sum())


def _load_image(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image


# --- the comparison ---------------------------------------------------------------------------


def sweep(methods: Sequence[Union[str, Setting]],
          lam: Union[float, str, Sequence[Union[float, str]], None] = None,
          saliency: Union[str, Sequence[str], None] = None) -> List[Setting]:
    """The configurations of a sweep: each method named in ``methods`` once per value of
    ``lam`` and ``saliency`` it uses, labelled with them, in the order given. ``greedyprune``
    runs the cross product of ``lam`` × ``saliency`` (``"greedyprune λ=0.25 cls"``), except that
    ``saliency="none"`` (diversity only, where λ has no effect) is one configuration,
    ``"greedyprune none"``; the other methods that read saliency (``topk``, ``cdpruner``) run
    once per saliency (``"topk cls"``; ``topk`` skips none, which it cannot run with); those
    that ignore it (:func:`greedyprune.methods.uses_saliency`), and :class:`Setting` objects,
    as they are. None leaves an option to the answerer (one configuration, labelled with the
    method alone)."""
    from . import methods as registry
    from .config import SALIENCY, check_lam_setting

    lams: Optional[List[Any]] = None if lam is None else [
        check_lam_setting(v) for v in _as_list(lam, "lam", (int, float, str))]
    kinds = None if saliency is None else _as_list(saliency, "saliency", (str,))
    for kind in kinds or []:
        if kind not in SALIENCY:
            raise ValueError(f"saliency must hold values from {', '.join(map(repr, SALIENCY))}, "
                             f"got {kind!r}")
    chosen: List[Setting] = []
    for method in methods:
        if isinstance(method, Setting):
            chosen.append(method)
            continue
        name = _method_name(method)
        registry.get(name)
        if name == "greedyprune" and (lams is not None or kinds is not None):
            for kind in kinds or [None]:
                if kind == "none":
                    chosen.append(Setting(name, 0.0, "none", "greedyprune none"))
                    continue
                for value in (lams or [None]):
                    shown = None if value is None else f"λ={value}" if value == "auto" else \
                        f"λ={value:g}"
                    label = " ".join(part for part in (name, shown, kind) if part)
                    chosen.append(Setting(name, value, kind, label))
        elif registry.uses_saliency(name) and kinds is not None:
            if kinds == ["none"] and registry.needs_saliency(name):
                raise ValueError(f"method {name!r} needs saliency: add 'text', 'cls' or 'query' "
                                 "to saliency, or leave it out of methods")
            chosen += [Setting(name, saliency=kind, label=f"{name} {kind}") for kind in kinds
                       if kind != "none" or not registry.needs_saliency(name)]
        else:
            chosen.append(Setting(name))
    return chosen


def _as_list(value, name: str, types: tuple) -> list:
    values = [value] if isinstance(value, types) else list(value)
    if not values or any(isinstance(v, bool) or not isinstance(v, types) for v in values):
        raise TypeError(f"{name} must be one value or a non-empty list of them, got {value!r}")
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{name} holds {', '.join(repeated)} more than once")
    return values


def compare(
    answerer: Answerer,
    records: Iterable[Union[Record, Dict[str, Any]]],
    methods: Sequence[Union[str, Setting]] = ("greedyprune",),
    keep: Union[Budget, Sequence[Budget], None] = None,
    *,
    lam: Union[float, str, Sequence[Union[float, str]], None] = None,
    saliency: Union[str, Sequence[str], None] = None,
    seeds: Sequence[int] = (0,),
    batch_size: int = 1,
    progress: bool = True,
    model: str = "",
    keeps: Optional[Sequence[Budget]] = None,
) -> Report:
    """Answer every record unpruned and under every (method, keep); return a :class:`Report`.

    ``records``: :class:`Record` objects or dicts with ``image``, ``question`` and optional
    ``answers`` and ``category``. ``methods``: names from :mod:`greedyprune.methods`, or
    :class:`Setting` objects that also fix ``lam`` / ``saliency``. ``lam`` and ``saliency``
    (one value or a list) sweep the methods that use them, each configuration labelled in the
    report: ``lam=[0, 0.25], saliency=["cls", "query"]`` runs four greedyprune configurations
    (:func:`sweep` says which); None leaves them to the answerer. ``keep``: the budgets, as
    :func:`greedyprune.hf.attach` and ``--keep`` take them: tokens kept per image (ints) or
    fractions (floats in (0, 1)), one or a list, not mixed (default 64, 128 and 192;
    ``keeps``, its former name, still works and warns). ``seeds``: the seeds a seeded
    method (``random``) runs with; with several, the report gives the mean over all of them and
    the spread (standard deviation) of the per-seed means. ``batch_size`` > 1 answers that
    many records per call through the answerer's ``answer_batch`` (:class:`HFAnswerer` has
    one): much faster, the same answers, no prefill times. ``progress`` shows a progress bar.
    """
    from . import methods as registry

    cases = [r if isinstance(r, Record) else Record(**r) for r in records]
    if not cases:
        raise ValueError("records must hold at least one case")
    settings = sweep(methods, lam, saliency)
    for setting in settings:
        registry.get(setting.method)  # an unknown name fails now, not after the unpruned pass
    labels = [s.name for s in settings]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods must have distinct names, got {labels}")
    keeps = budgets(keep, keeps, "compare", default=(64, 128, 192))
    seeds = _check_seeds(seeds)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > 1 and not hasattr(answerer, "answer_batch"):
        raise ValueError("batch_size > 1 needs an answerer with an answer_batch method "
                         "(HFAnswerer has one)")

    # (setting, seed, the options it passes): seeded methods once per seed when there are several.
    runs = [(s, seed, {**s.options(), **({} if seed is None else {"seed": seed})})
            for s in settings
            for seed in (seeds if s.method in SEEDED_METHODS and len(seeds) > 1 else [None])]
    results: List[Result] = []
    total = len(cases) * (1 + len(runs) * len(keeps))
    if batch_size > 1:
        with _progress_bar(total, progress) as bar:
            results = _compare_batched(answerer, cases, runs, keeps, batch_size, bar)
        return _report(results, settings, labels, keeps, seeds, model, answerer)
    with _progress_bar(total, progress) as bar:
        for n, record in enumerate(cases):
            name = record.id or str(n)
            image = _load_image(record.image)
            reference = answerer(image, record.question, None, None)
            bar.update(1)
            results.append(_result(name, UNPRUNED, None, reference, reference, record))
            for setting, seed, options in runs:
                for keep in keeps:
                    bar.set_postfix_str(f"{setting.name} keep={keep}", refresh=False)
                    answer = answerer(image, record.question, setting.method, keep, **options)
                    bar.update(1)
                    results.append(_result(name, setting.name, keep, answer, reference, record,
                                           seed))
    return _report(results, settings, labels, keeps, seeds, model, answerer)


def _report(results, settings, labels, keeps, seeds, model, answerer) -> Report:
    # The answerer's own options (HFAnswerer's attach options) complete each setting's.
    defaults = {k: v for k, v in getattr(answerer, "attach_options", {}).items() if k != "seed"}
    described = {s.name: {"method": s.method, **defaults, **s.options(),
                          **({"seeds": seeds} if s.method in SEEDED_METHODS else {})}
                 for s in settings}
    return Report(results, labels, keeps, model=model, settings=described)


def _compare_batched(answerer, records, runs, keeps, batch_size, bar) -> List[Result]:
    """:func:`compare`'s loop, configuration by configuration, ``batch_size`` records a call."""
    names = [record.id or str(n) for n, record in enumerate(records)]
    images = [_load_image(record.image) for record in records]
    chunks = [range(start, min(start + batch_size, len(records)))
              for start in range(0, len(records), batch_size)]

    def answer_all(method, keep, options):
        answers = []
        for chunk in chunks:
            answers += answerer.answer_batch([images[i] for i in chunk],
                                             [records[i].question for i in chunk],
                                             method, keep, **options)
            bar.update(len(chunk))
        return [dataclasses.replace(a, prefill_seconds=None) for a in answers]

    references = answer_all(None, None, {})
    results = [_result(name, UNPRUNED, None, ref, ref, record)
               for name, ref, record in zip(names, references, records)]
    for setting, seed, options in runs:
        for keep in keeps:
            bar.set_postfix_str(f"{setting.name} keep={keep}", refresh=False)
            answers = answer_all(setting.method, keep, options)
            results += [_result(name, setting.name, keep, answer, ref, record, seed)
                        for name, answer, ref, record in zip(names, answers, references, records)]
    return results


def _method_name(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError("methods must hold method names or Setting objects, got "
                        f"{type(method).__name__}")
    return method


def _check_seeds(seeds) -> List[int]:
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers (at least one), got {seeds}")
    return seeds


def _result(name, method, keep, answer: Answer, reference: Answer, record: Record,
            seed: Optional[int] = None) -> Result:
    return Result(
        record=name, method=method, keep=keep, answer=answer.text,
        agrees=normalize_answer(answer.text) == normalize_answer(reference.text),
        accuracy=None if not record.answers else vqa_accuracy(answer.text, record.answers),
        prefill_seconds=answer.prefill_seconds, tokens_before=answer.tokens_before,
        tokens_after=answer.tokens_after, category=record.category, seed=seed,
    )


def budgets(keep: Union[Budget, Sequence[Budget], None], keeps: Optional[Sequence[Budget]],
            caller: str, default: Sequence[Budget]) -> List[Budget]:
    """The budgets of a call that takes ``keep`` (one budget or several; None: ``default``),
    checked; ``keeps``, the argument's former name, is still accepted with a warning."""
    if keeps is not None:
        if keep is not None:
            raise TypeError(f"{caller}() got both keep and keeps, its former name: pass keep")
        warnings.warn(f"{caller}(keeps=...) is deprecated: pass keep=[...], as attach() and "
                      "--keep name the budget", DeprecationWarning, stacklevel=3)
        keep = keeps
    return check_keep(default if keep is None else keep)


def check_keep(keep: Union[Budget, Sequence[Budget]]) -> List[Budget]:
    """``keep`` as a list of budgets: token counts (ints >= 1) or fractions (floats in (0, 1)),
    at least one, not mixed; a single budget is a list of one."""
    keeps = [keep] if isinstance(keep, (int, float, str)) else list(keep)
    if not keeps:
        raise ValueError("keep must hold at least one budget")
    for one in keeps:
        if isinstance(one, bool) or not isinstance(one, (int, float)) or (
                isinstance(one, float) and not 0.0 < one < 1.0) or (
                isinstance(one, int) and one < 1):
            raise ValueError("keep must be token counts (integers >= 1) or fractions (floats "
                             f"in (0, 1)), got {one!r}")
    if len({isinstance(k, float) for k in keeps}) > 1:
        raise ValueError(f"keep must be all token counts or all fractions, got {keeps}")
    return keeps


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool):
    """One bar for the whole comparison (tqdm; none without it), styled by :func:`_bar_style`."""
    if enabled:
        try:
            bar_class, options = _bar_style(sys.stderr)
        except ImportError:
            enabled = False
    if not enabled:
        yield _NoBar()
        return
    with bar_class(total=total, desc="answering", unit="answer", **options) as bar:
        yield bar


def _bar_style(stream) -> Tuple[Any, Dict[str, Any]]:
    """The tqdm class and options for a bar written to ``stream``: in a Jupyter kernel, a widget
    (with ipywidgets; without, a text bar that Jupyter redraws in place); on a terminal, a bar
    redrawn in place; on anything else (a log file, a pipe, CI), a line at the start, at most
    one a minute and one at the end, rather than one every tenth of a second."""
    from tqdm import tqdm

    if _in_jupyter_kernel():
        from tqdm.notebook import IProgress, tqdm as notebook_tqdm

        return (notebook_tqdm, {}) if IProgress is not None else (tqdm, {"file": stream})
    if _is_terminal(stream):
        return tqdm, {"file": stream, "dynamic_ncols": True}
    return tqdm, {"file": stream, "mininterval": 60.0, "ascii": True, "ncols": 100}


def _in_jupyter_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass
