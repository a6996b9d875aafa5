"""The OpenAI-compatible server with the plugin: started as users start it, on 127.0.0.1."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT, prompt
from transformers import AutoTokenizer

from greedyprune import builtin, scenes
from greedyprune.evaluate import SHORT_ANSWER_PROMPT

KEEP = 48
SETTINGS = {"greedyprune": {"keep": KEEP, "method": "greedyprune", "lam": 0.25,
                            "saliency": "cls"}}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    environment = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
             "--port", str(port), "--model", str(builtin.path()), "--dtype", "float32",
             "--max-model-len", "256", "--enforce-eager",
             "--hf-overrides", json.dumps(SETTINGS)],
            stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the server did not start in 600 s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _chat(url: str, image_url: str, question: str):
    body = {"model": str(builtin.path()), "max_tokens": 16, "temperature": 0,
            "add_special_tokens": True,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": SHORT_ANSWER_PROMPT.format(question=question)}]}]}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_chat_with_a_base64_image_reports_the_pruned_prompt(server):
    tokenizer = AutoTokenizer.from_pretrained(builtin.path())
    questions = scenes.questions(9, 6)
    with ThreadPoolExecutor(len(questions)) as pool:
        replies = list(pool.map(lambda q: _chat(server, _data_url(scenes.image(q.scene)),
                                                q.question), questions))
    right = 0
    for question, (status, reply) in zip(questions, replies):
        assert status == 200, reply
        text = len(tokenizer(prompt(question.question)).input_ids)
        assert reply["usage"]["prompt_tokens"] == text - 1 + KEEP
        right += reply["choices"][0]["message"]["content"].strip() == question.answer
    assert right >= 5


def test_a_bad_request_gets_an_error_and_the_server_serves_on(server):
    status, reply = _chat(server, "data:image/png;base64,bm90IGFuIGltYWdl", "what is it?")
    assert status == 400, reply
    question = scenes.questions(10, 1)[0]
    status, reply = _chat(server, _data_url(scenes.image(question.scene)), question.question)
    assert status == 200 and reply["choices"][0]["message"]["content"].strip() == question.answer


def test_the_readme_example_runs_as_written():
    """The Python example of README.md's "Serve with vLLM", run as a user would run it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Serve with vLLM"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("```\n", start)]
    environment = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=environment, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    (line,) = [line for line in result.stdout.splitlines() if line.endswith("prompt tokens")]
    answer, count = line.split("|")
    question = scenes.questions(0, 1)[0]
    text_tokens = len(AutoTokenizer.from_pretrained(builtin.path())(
        f"USER: <image>\n{question.question} ASSISTANT:").input_ids) - 1
    assert answer.strip()
    assert count.strip() == f"{text_tokens + 48} prompt tokens"
