"""Which lmms-eval wrapper each greedyprune model extends: plain data, no imports."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Family:
    #: lmms-eval's plain wrapper, "module:Class".
    simple: str
    #: lmms-eval's chat wrapper, where it has one.
    chat: Optional[str]
    #: The transformers classes (top-level) that the wrapper loads.
    classes: Tuple[str, ...]
    #: Other names lmms-eval accepts for the model.
    aliases: Tuple[str, ...] = ()

    @property
    def simple_name(self) -> str:
        """Name of greedyprune's subclass of the plain wrapper in ``greedyprune.lmms._models``."""
        return self.simple.rsplit(":", 1)[1]

    @property
    def chat_name(self) -> str:
        return self.simple_name + "Chat"


#: greedyprune's lmms-eval models by name (``--model``).
FAMILIES = {
    "greedyprune_llava_hf": Family(
        simple="lmms_eval.models.simple.llava_hf:LlavaHf",
        chat="lmms_eval.models.chat.llava_hf:LlavaHf",
        classes=("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                 "LlavaOnevisionForConditionalGeneration"),
        aliases=("greedyprune_llava_onevision",)),
    "greedyprune_qwen2_vl": Family(
        simple="lmms_eval.models.simple.qwen2_vl:Qwen2_VL", chat=None,
        classes=("Qwen2VLForConditionalGeneration",)),
    "greedyprune_qwen2_5_vl": Family(
        simple="lmms_eval.models.simple.qwen2_5_vl:Qwen2_5_VL",
        chat="lmms_eval.models.chat.qwen2_5_vl:Qwen2_5_VL",
        classes=("Qwen2_5_VLForConditionalGeneration",)),
    "greedyprune_qwen3_vl": Family(
        simple="lmms_eval.models.simple.qwen3_vl:Qwen3_VL",
        chat="lmms_eval.models.chat.qwen3_vl:Qwen3_VL",
        classes=("Qwen3VLForConditionalGeneration",)),
}
