"""The package type-checks, its C extension matches its stub, and a user's script that uses the
public API passes mypy while a misspelt option does not (the annotations are the code's own;
only the C extension has a stub)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")
ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = """
    import json
    import numpy as np
    import greedyprune
    from greedyprune import PruneConfig, methods
    from greedyprune.evaluate import Report
    from greedyprune.hf import ImageRecord, attach, detach, get_handle

    kept: np.ndarray = greedyprune.select(np.zeros((8, 4), np.float32), 3, lam=0.5)
    order, gains = greedyprune.greedy(np.zeros((8, 4)), 3, backend="c")
    previous: int = greedyprune.set_num_threads(2)
    config = PruneConfig(keep=64, saliency="cls", lam=0.25, backend="torch")
    text: str = json.dumps(config.to_dict())
    again: PruneConfig = PruneConfig.from_dict(json.loads(text)).replace(keep_ratio=0.5)
    selector = methods.get("divprune")
    picks = selector(np.zeros((8, 4)), 3, None, lam=0.0, seed=1)

    def prune(model: object, report: Report) -> None:
        with attach(model, config) as handle:
            records: list[ImageRecord] = handle.last
            print([r.order for r in records if r.copy_of is None], handle.config.budget)
            with handle.disabled():
                pass
        handle = attach(model, keep=16, saliency="text", method="greedyprune")
        assert get_handle(model) is handle
        detach(model)
        print(report.config(report.methods[0], report.keeps[0]).to_dict())
"""


def _mypy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, MYPY_CACHE_DIR=str(ROOT / ".mypy_cache"))
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_package_type_checks():
    result = _mypy("--config-file", "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr


#: stubtest compares the stub with the extension at run time, and always analyses from scratch
#: (no cache): NumPy's stubs and the rest of the package are read without their contents, which
#: were most of its time. The stub's own types, NumPy's included, are checked by
#: test_the_package_type_checks.
STUBTEST_CONFIG = """
[mypy]
python_version = 3.10
ignore_missing_imports = True
[mypy-numpy,numpy.*,torch,torch.*,transformers,transformers.*]
follow_imports = skip
[mypy-greedyprune.*]
ignore_errors = True
[mypy-greedyprune._core]
ignore_errors = False
"""


def test_the_c_extension_matches_its_stub(tmp_path):
    config = tmp_path / "stubtest.ini"
    config.write_text(STUBTEST_CONFIG)
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", "greedyprune._core",
                             "--mypy-config-file", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_user_script_type_checks_and_a_misspelt_option_does_not(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent(USER_SCRIPT))
    result = _mypy("--config-file", str(ROOT / "pyproject.toml"), str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("from greedyprune.hf import attach\n"
                   "attach(object(), keep=16, saliency='CLS')\n"
                   "attach(object(), keep=16, backend='cuda')\n")
    result = _mypy("--config-file", str(ROOT / "pyproject.toml"), str(bad))
    assert result.returncode == 1 and 'Argument "saliency" to "attach"' in result.stdout, (
        result.stdout)
    assert 'Argument "backend" to "attach"' in result.stdout, result.stdout
