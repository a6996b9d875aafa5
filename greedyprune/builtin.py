"""The built-in models: small LLaVAs trained from scratch, one per built-in task.

Two tasks (:data:`TASKS`): :mod:`greedyprune.scenes` (the default: 2–6 objects on a plain
background) and :mod:`greedyprune.crowds` (12–16 mostly small objects on a background of several
regions: more to see than a small budget can keep). Each model is an ordinary HuggingFace
checkpoint folder shipped inside the package, so it loads with transformers' own API and needs
no download::

    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from greedyprune import builtin
    model = LlavaForConditionalGeneration.from_pretrained(builtin.path())
    processor = AutoProcessor.from_pretrained(builtin.path())
    # or, in one call, in eval mode: model, processor = builtin.load()   # or load("crowds")

Architecture (:func:`config`): a CLIP vision tower (192-pixel images, 16-pixel patches, so
12 × 12 = 144 visual tokens), LLaVA's two-layer GELU projector and a Llama decoder; a
word-level tokenizer built in code (:func:`tokenizer`) and a chat template in LLaVA-1.5's
``USER: ... ASSISTANT:`` format. The two models share that architecture, tokenizer and
processor; each answers its task's questions with one word. ``training/train_scenes.py --task
NAME`` in the repository trains one from scratch.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional, Tuple

from . import scenes

__all__ = ["CHAT_TEMPLATE", "TASKS", "config", "load", "path", "processor", "task", "tokenizer"]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

#: Extra words: the chat template's and LLaVA-1.5's short-answer instruction, so that prompts
#: written for LLaVA tokenize without unknown words.
_PROMPT_WORDS = ["user", "assistant", ":", "answer", "question", "using", "single", "word", "or",
                 "phrase", ".", ",", "color", "of"]

#: LLaVA-1.5's conversation format, ``USER: <image>\n{question} ASSISTANT:``; the content may be
#: a string or a list of image/text parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{{ '\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

#: The built-in tasks (the first is the default) and their checkpoints' folders in the package.
TASKS = {"scenes": "scenes-llava", "crowds": "crowds-llava"}


def _task_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"task must be a str, got {type(name).__name__}")
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return name


def task(name: str = "scenes"):
    """The module of a built-in task: :mod:`greedyprune.scenes` or :mod:`greedyprune.crowds`
    (each has ``benchmark``, ``questions``, ``mentioned``, ``CATEGORIES``)."""
    from importlib import import_module

    return import_module(f"greedyprune.{_task_name(name)}")


def path(task: str = "scenes") -> Path:
    """The folder of the task's shipped checkpoint (``config.json``, ``model.safetensors``,
    processor files, ``training.json``); FileNotFoundError if this installation lacks it."""
    folder = Path(str(resources.files("greedyprune") / "data" / TASKS[_task_name(task)]))
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the built-in {task} model is not in this installation ({folder} has no "
            f"model.safetensors): train it with training/train_scenes.py --task {task} from the "
            f"repository")
    return folder


def load(task: str = "scenes", device: Optional[str] = None) -> Tuple[Any, Any]:
    """``(model, processor)`` of the task's shipped checkpoint, the model in eval mode on
    ``device`` (default: the CPU)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder = path(task)
    model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    return model.to(device or "cpu").eval(), AutoProcessor.from_pretrained(
        folder, local_files_only=True)


def tokenizer():
    """A word-level tokenizer built in code: lower-cased words and punctuation of the scenes
    questions, answers and prompts, each one token; anything else is ``<unk>``. It adds ``<s>``
    in front, as Llama's does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL_TOKENS + list(dict.fromkeys(scenes.vocabulary() + _PROMPT_WORDS))
    vocab = {word: i for i, word in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"}, padding_side="left")


def processor():
    """A ``LlavaProcessor``: CLIP's image processor at 192 px and :func:`tokenizer`."""
    import transformers
    from transformers import LlavaProcessor

    image_processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or \
        transformers.CLIPImageProcessor
    size = scenes.IMAGE_SIZE
    image_processor = image_processor_class(size={"shortest_edge": size},
                                            crop_size={"height": size, "width": size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer(),
                          patch_size=scenes.CELL, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)


def config(vocab_size: Optional[int] = None):
    """The model's ``LlavaConfig``: CLIP tower 4 × 128, Llama decoder 4 × 128."""
    from transformers import LlavaConfig

    if vocab_size is None:
        vocab_size = len(tokenizer())
    return LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=scenes.IMAGE_SIZE,
                           patch_size=scenes.CELL, hidden_size=128, intermediate_size=256,
                           num_hidden_layers=4, num_attention_heads=4, projection_dim=128),
        text_config=dict(model_type="llama", vocab_size=vocab_size, hidden_size=128,
                         intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                         # ≈ 1/√width: at the default 0.02 a decoder this narrow starts with
                         # near-uniform attention and near-vanishing q/k gradients.
                         initializer_range=0.08,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3,
                         tie_word_embeddings=True),
        image_token_id=SPECIAL_TOKENS.index("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
