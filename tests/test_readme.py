"""README.md's Python API example runs as written, and its claims about errors hold."""
from __future__ import annotations

import pathlib
import re

import greedyprune

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_python_api_example_runs():
    block = next(b for b in python_blocks() if "greedyprune.select(" in b)
    before = greedyprune.get_num_threads()
    try:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        assert namespace["keep"].shape == (64,)
        assert list(namespace["order"][:1]) and namespace["gains"].shape == (64,)
    finally:
        greedyprune.set_num_threads(before)


def test_quoted_error_message_is_real():
    quoted = re.search(r"`(ValueError: k must be in .*?)`", README.read_text(encoding="utf-8")).group(1)
    import numpy as np
    import pytest

    with pytest.raises(ValueError) as info:
        greedyprune.select(np.ones((576, 4), np.float32), 0)
    assert f"ValueError: {info.value}" == quoted
