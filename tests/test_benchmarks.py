"""The benchmark scripts: bench_select.py's smoke run writes what the README table needs, and
update_readme.py pastes tables between their markers without touching anything else."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
METHODS = {"stream", "c_1t", "c_2t", "reference", "torch_nxn_1t", "torch_nxn_2t"}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


update_readme = load_script("update_readme")


# --- bench_select.py --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_select.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out, json.loads((out / "bench_select.json").read_text()), done.stdout


def test_quick_run_writes_json_with_every_section(quick_run):
    _, document, _ = quick_run
    sections = {"environment", "header_lines", "config", "results", "memory", "targets"}
    assert sections <= set(document)
    assert document["config"]["quick"] is True
    for key in ("python", "numpy", "torch", "cpu", "logical_cpus", "environment_variables"):
        assert key in document["environment"]
    kinds = {entry["features"] for entry in document["results"]}
    assert kinds == {"gaussian", "clustered"}
    for entry in document["results"]:
        assert set(entry["methods"]) == METHODS
        assert {"agreement", "ratios", "lazy_distance_evaluations"} <= set(entry)
        for name in ("stream", "c_1t", "c_2t", "reference"):
            assert entry["methods"][name]["median_s"] > 0
        assert entry["ratios"]["c_1t_over_stream"] > 0


def test_quick_run_methods_agree_on_the_picks(quick_run):
    _, document, _ = quick_run
    for entry in document["results"]:
        agreement = entry["agreement"]
        assert agreement["all_agree"], agreement
        assert agreement["c_core_same_at_1_and_2_threads"]
        assert {"c_1t", "c_2t", "reference"} <= set(agreement["methods"])
        for verdict in agreement["methods"].values():
            assert verdict["max_gain_shortfall"] <= agreement["tolerance"]


def test_quick_run_measures_memory_and_checks_targets(quick_run):
    _, document, stdout = quick_run
    for row in document["memory"]:
        c_core = row["methods"]["c_1t"]
        assert "error" not in c_core, c_core
        assert c_core["expected_bytes"] > 0 and c_core["extra_bytes"] >= 0
    verdicts = {t["target"]: t["verdict"] for t in document["targets"]}
    assert verdicts["memory_not_quadratic"] == "PASS"
    assert all(t["verdict"] in {"PASS", "MISS", "NOT RUN"} for t in document["targets"])
    assert "memory_not_quadratic" in json.dumps(document["targets"])
    assert "PASS" in stdout


def test_quick_run_markdown_has_header_tables_and_targets(quick_run):
    out, document, _ = quick_run
    text = (out / "bench_select.md").read_text()
    for line in document["header_lines"]:
        assert line in text
    assert "| features | N × D, K |" in text
    assert "gaussian (i.i.d.)" in text and "clustered (image-like)" in text
    assert "**Key figures**" in text and "quadratic in N" in text
    for verdict in ("PASS", "MISS", "NOT RUN", "target", "issue"):  # the JSON keeps verdicts
        assert verdict not in text


def test_from_json_rewrites_the_markdown_the_run_wrote(quick_run, tmp_path):
    out, _, _ = quick_run
    (tmp_path / "bench_select.json").write_text((out / "bench_select.json").read_text())
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_select.py"), "--from-json", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bench_select.md").read_text() == (out / "bench_select.md").read_text()


def test_pick_shortfall_flags_a_wrong_pick():
    import numpy as np

    import greedyprune

    bench = load_script("bench_select")
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    order, _ = greedyprune.greedy(x, 5, None, 0.0)
    assert bench.pick_shortfall(x, None, 0.0, order) <= 1e-6
    wrong_order = [int(order[0]), *[i for i in range(50) if i not in order][:4]]
    assert bench.pick_shortfall(x, None, 0.0, wrong_order) > 1e-3


# --- update_readme.py -------------------------------------------------------------------------


README = """# project

Intro text.

<!-- bench_select:start -->
old table
<!-- bench_select:end -->

Middle text.

<!-- bench_hf:start -->
<!-- bench_hf:end -->

Tail text.
"""


@pytest.fixture
def files(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_select.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    return readme, results


def run_update(readme, results, *extra):
    return update_readme.main(["--readme", str(readme), "--results", str(results), *extra])


def test_update_readme_pastes_between_the_markers_only(files):
    readme, results = files
    assert run_update(readme, results) == 0
    text = readme.read_text()
    assert "old table" not in text
    table = "| a | b |\n|---|---|\n| 1 | 2 |"
    assert f"<!-- bench_select:start -->\n{table}\n<!-- bench_select:end -->" in text
    # Everything outside the markers is untouched; bench_hf has no results, so it stays empty.
    assert text.replace(table, "old table") == README


def test_update_readme_is_idempotent_and_check_mode(files):
    readme, results = files
    assert run_update(readme, results, "--check") == 1  # out of date, and left unchanged
    assert readme.read_text() == README
    assert run_update(readme, results) == 0
    once = readme.read_text()
    assert run_update(readme, results) == 0
    assert readme.read_text() == once
    assert run_update(readme, results, "--check") == 0


def test_update_readme_handles_any_name(files):
    readme, results = files
    (results / "bench_hf.md").write_text("hf table\n")
    assert run_update(readme, results) == 0
    assert "<!-- bench_hf:start -->\nhf table\n<!-- bench_hf:end -->" in readme.read_text()


def test_update_readme_without_markers_is_a_clear_error(files, capsys):
    readme, results = files
    readme.write_text("# project\n\nno markers here\n")
    assert run_update(readme, results) == 1
    err = capsys.readouterr().err
    assert "<!-- bench_select:start -->" in err and "<!-- bench_select:end -->" in err
    assert readme.read_text() == "# project\n\nno markers here\n"


def test_update_readme_rejects_duplicated_or_reversed_markers(files, capsys):
    readme, results = files
    readme.write_text(README + "<!-- bench_select:start -->\n")
    assert run_update(readme, results) == 1
    assert "exactly once" in capsys.readouterr().err
    readme.write_text("<!-- bench_select:end -->\n<!-- bench_select:start -->\n")
    assert run_update(readme, results) == 1
    assert "before" in capsys.readouterr().err


def test_update_readme_missing_results_file_is_an_error(files, capsys):
    readme, results = files
    assert run_update(readme, results, "bench_hf") == 1
    assert "bench_hf.md does not exist" in capsys.readouterr().err
