"""The benchmark scripts: their shared harness, bench_select.py's and bench_hf.py's smoke runs
write what the README tables need, the committed tables are what their JSON regenerates, and
update_readme.py pastes tables between their markers without touching anything else."""
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
METHODS = {"stream", "c_1t", "c_2t", "reference", "torch_nxn_1t", "torch_nxn_2t"}
#: What the user-facing tables must never state: the internal targets and their verdicts.
VERDICT_WORDS = ("PASS", "MISS", "NOT RUN", "target", "issue")


def load_script(name):
    """Import benchmarks/NAME.py the way the scripts import one another: from their folder."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def run_script(*args, timeout=120, statuses=(0,)):
    # This checkout's package first, not another one installed in editable mode.
    path = os.pathsep.join(filter(None, [str(BENCHMARKS.parent), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode in statuses, done.stderr
    return done


harness = load_script("harness")
update_readme = load_script("update_readme")


# --- harness.py -------------------------------------------------------------------------------


def test_measure_discards_a_fast_warm_up_and_returns_the_first_result():
    calls = []
    times, result = harness.measure(lambda: calls.append(len(calls)) or len(calls), 10.0, 3, 3)
    assert result == 1 and len(calls) == 4 and len(times) == 3  # warm-up + 3 timed calls
    assert all(t >= 0 for t in times)


def test_measure_counts_a_first_call_that_takes_the_budget():
    calls = []
    times, _ = harness.measure(lambda: calls.append(1), 0.0, 5, 5, slow_min_repeats=1)
    assert len(times) == 1 and len(calls) == 1  # the first call alone is enough
    times, _ = harness.measure(lambda: calls.append(1), 0.0, 5, 5)
    assert len(times) == 5 and len(calls) == 6  # the first call and four more


def test_summary_and_ratio():
    assert harness.summary([0.3, 0.1, 0.2, 0.4]) == pytest.approx(
        {"median_s": 0.25, "repeats": 4, "min_s": 0.1})
    assert harness.ratio(3.0, 2.0) == 1.5
    assert harness.ratio(None, 2.0) is None
    assert harness.ratio(3.0, None) is None
    assert harness.ratio(3.0, 0.0) is None


def test_table_head_aligns_each_column_and_rejects_a_wrong_alignment():
    assert harness.table_head(["a", "b", "c"], "lrl") == ["| a | b | c |", "|---|---:|---|"]
    assert harness.table_row(["x", 1, 2.5]) == "| x | 1 | 2.5 |"
    with pytest.raises(ValueError, match=r"aligns must hold one 'l' or 'r' per header \(2\)"):
        harness.table_head(["a", "b"], "l")
    with pytest.raises(ValueError, match="aligns must hold"):
        harness.table_head(["a", "b"], "lc")


def test_thread_contexts_restore_the_previous_setting():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    with harness.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    threadpoolctl = pytest.importorskip("threadpoolctl")
    np.ones(4) @ np.ones(4)  # load the BLAS
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    with harness.blas_threads(1):
        inside = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert all(i["num_threads"] == 1 for i in inside)
    after = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert [i["num_threads"] for i in after] == [i["num_threads"] for i in blas]


def test_environment_records_versions_threads_and_extras(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    env = harness.environment(stream_backend="numpy")
    assert env["greedyprune"] == harness.greedyprune.__version__
    assert env["numpy"] == np.__version__
    assert env["environment_variables"]["OMP_WAIT_POLICY"] == "passive"
    assert set(env["environment_variables"]) == set(harness.THREAD_VARIABLES)
    assert list(env)[-1] == "stream_backend" and env["stream_backend"] == "numpy"
    assert len(env["load_average_at_start"]) == 3 and env["logical_cpus"] >= 1


CHILD = """
import json, sys
sys.path.insert(0, {benchmarks!r})
import numpy as np
import harness
assert sys.argv[1] == harness.MEMORY_CHILD_OPTION
size = json.loads(sys.argv[2])["bytes"]
if size < 0:
    raise SystemExit("negative size")
print(json.dumps(harness.peak_extra_memory(lambda: np.ones(size // 8))))
"""


def test_peak_memory_in_a_child_sees_the_allocation(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(benchmarks=str(BENCHMARKS)))
    small = harness.measure_in_child(script, {"bytes": 8})
    large = harness.measure_in_child(script, {"bytes": 64 << 20})
    if not large["peak_reset"]:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert small["extra_bytes"] < 8 << 20
    assert 60 << 20 <= large["extra_bytes"] < 80 << 20


def test_peak_memory_child_failure_is_reported(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(benchmarks=str(BENCHMARKS)))
    assert harness.measure_in_child(script, {"bytes": -1}) == {"error": "negative size"}


# --- the committed tables ---------------------------------------------------------------------


def test_committed_bench_select_table_is_what_its_json_regenerates(tmp_path):
    shutil.copy(RESULTS / "bench_select.json", tmp_path)
    run_script(BENCHMARKS / "bench_select.py", "--from-json", "--out", tmp_path)
    assert (tmp_path / "bench_select.md").read_text() == (RESULTS / "bench_select.md").read_text()


def test_committed_bench_hf_table_is_what_its_json_regenerates(tmp_path):
    shutil.copy(RESULTS / "bench_hf.json", tmp_path)
    run_script(BENCHMARKS / "bench_hf.py", "--from-json", tmp_path / "bench_hf.json")
    text = (tmp_path / "bench_hf.md").read_text()
    assert text == (RESULTS / "bench_hf.md").read_text()
    for word in VERDICT_WORDS:
        assert word not in text
    committed = json.loads((RESULTS / "bench_hf.json").read_text())
    assert json.loads((tmp_path / "bench_hf.json").read_text()) == committed


def test_committed_bench_vllm_table_is_what_its_json_regenerates(tmp_path):
    committed = RESULTS / "bench_vllm.md"
    run_script(BENCHMARKS / "bench_vllm.py", "--from-json", RESULTS / "bench_vllm.json",
               "--out", tmp_path)
    assert (tmp_path / "bench_vllm.md").read_text() == committed.read_text()


# --- bench_select.py --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # Exit status 1 when a performance target is missed (a busy machine may miss one).
    done = run_script(BENCHMARKS / "bench_select.py", "--quick", "--out", out, statuses=(0, 1))
    document = json.loads((out / "bench_select.json").read_text())
    missed = any(t["verdict"] == "MISS" for t in document["targets"])
    assert done.returncode == int(missed), document["targets"]
    return out, document, done.stdout


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
    for verdict in VERDICT_WORDS:  # the JSON keeps the verdicts
        assert verdict not in text


def test_from_json_rewrites_the_markdown_the_run_wrote(quick_run, tmp_path):
    out, _, _ = quick_run
    shutil.copy(out / "bench_select.json", tmp_path)
    run_script(BENCHMARKS / "bench_select.py", "--from-json", "--out", tmp_path)
    assert (tmp_path / "bench_select.md").read_text() == (out / "bench_select.md").read_text()


def test_quick_run_counts_the_torch_ports_operations(quick_run):
    pytest.importorskip("torch")
    out, document, _ = quick_run
    rows = document["torch_port_ops"]
    assert [[row["n"], row["d"], row["k"]] for row in rows] == document["config"]["shapes"]
    for row in rows:
        assert row["ops"] > row["k"] and row["ops_per_pick"] == row["ops"] / row["k"]
    text = (out / "bench_select.md").read_text()
    assert "**PyTorch port: operations per pick**" in text
    assert f"| {rows[0]['ops']} | {rows[0]['ops_per_pick']:.1f} |" in text


def test_top_level_aten_ops_counts_calls_not_what_they_call():
    torch = pytest.importorskip("torch")
    x = torch.ones(4, 3)
    assert harness.top_level_aten_ops(lambda: (x + 1).sum()) == 2
    assert harness.top_level_aten_ops(lambda: torch.nn.functional.normalize(x)) >= 1
    assert harness.top_level_aten_ops(lambda: None) == 0


def test_the_torch_port_takes_at_most_half_its_former_operations_per_pick():
    """Each operation is a kernel launch or more on a GPU; the port's loop once took 35 per
    pick. A count, not a timing: the same at every run."""
    torch = pytest.importorskip("torch")
    from greedyprune import _torch

    report = load_script("select_report")
    g = torch.Generator().manual_seed(0)
    for x, s, k in [(torch.randn(200, 16, generator=g), torch.rand(200, generator=g), 50),
                    (torch.randn(2, 150, 8, generator=g).bfloat16(), None, 40)]:
        ops = harness.top_level_aten_ops(lambda: _torch.greedy(x, k, s, 0.5))
        assert ops / k <= report.TARGET_MAX_PORT_OPS_PER_PICK, (x.shape, ops / k)


def test_pick_shortfall_flags_a_wrong_pick():
    import numpy as np

    import greedyprune

    checks = load_script("select_checks")
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    order, _ = greedyprune.greedy(x, 5, None, 0.0)
    assert checks.pick_shortfall(x, None, 0.0, order) <= 1e-6
    wrong_order = [int(order[0]), *[i for i in range(50) if i not in order][:4]]
    assert checks.pick_shortfall(x, None, 0.0, wrong_order) > 1e-3


# --- bench_hf.py ------------------------------------------------------------------------------


def test_bench_hf_quick_run_times_every_budget_and_its_json_regenerates_the_table(tmp_path):
    pytest.importorskip("transformers")
    run_script(BENCHMARKS / "bench_hf.py", "--quick", "--shapes", "llava-1.5", "--out", tmp_path,
               timeout=600)
    report = json.loads((tmp_path / "bench_hf.json").read_text())
    assert report["quick"] is True and report["environment"]["transformers"]
    (shape,) = report["shapes"]
    assert [row["keep"] for row in shape["rows"]] == [None, 192, 128, 64]
    unpruned, *pruned = shape["rows"]
    for row in pruned:
        assert row["hook_median"] > 0 and row["kept_per_image"] == [row["keep"]]
        assert row["seq_len"] == unpruned["seq_len"] - 576 + row["keep"]
    text = (tmp_path / "bench_hf.md").read_text()
    for word in VERDICT_WORDS:
        assert word not in text
    (tmp_path / "bench_hf.md").unlink()
    run_script(BENCHMARKS / "bench_hf.py", "--from-json", tmp_path / "bench_hf.json")
    assert (tmp_path / "bench_hf.md").read_text() == text


# --- bench_gpu.py -----------------------------------------------------------------------------


def test_bench_gpu_cases_cover_every_shape_in_both_half_precisions():
    bench_gpu = load_script("bench_gpu")
    assert bench_gpu.cases() == [(1, 576, 4096, 64, "float16"), (1, 576, 4096, 64, "bfloat16"),
                                 (1, 2880, 4096, 320, "float16"), (1, 2880, 4096, 320, "bfloat16"),
                                 (8, 576, 4096, 64, "float16"), (8, 576, 4096, 64, "bfloat16")]


def test_bench_gpu_times_medians_between_synchronizations():
    bench_gpu = load_script("bench_gpu")
    events = []
    median = bench_gpu.median_seconds(lambda: events.append("call"), 3,
                                      lambda: events.append("sync"))
    assert events == ["call"] + ["sync", "call", "sync"] * 3 and median >= 0


def test_bench_gpu_table_shows_times_failures_and_the_ratio():
    bench_gpu = load_script("bench_gpu")
    env = harness.environment(gpu="Some GPU", cuda="12.8")
    rows = [{"b": 1, "n": 576, "d": 4096, "k": 64, "dtype": "float16", "port": 0.004,
             "graph": 0.001, "host": 0.002},
            {"b": 8, "n": 576, "d": 4096, "k": 64, "dtype": "bfloat16", "port": 0.03,
             "graph": {"error": "RuntimeError: operation not permitted when stream is capturing"},
             "host": 0.01}]
    text = bench_gpu.markdown({"environment": env, "repeats": 20, "rows": rows})
    assert "Some GPU" in text and "CUDA 12.8" in text and "Median of 20 calls" in text
    assert "| 1 × 576 × 4096, K = 64 | float16 | 4 ms | 1 ms | 2 ms | 2× |" in text
    failed = "failed: RuntimeError: operation not permitted when stream is capturi"
    assert f"| 30 ms | {failed} | 10 ms | 3× |" in text
    for word in VERDICT_WORDS:
        assert word not in text


def test_bench_gpu_without_a_cuda_device_says_so_and_measures_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    done = run_script(BENCHMARKS / "bench_gpu.py", "--out", tmp_path, statuses=(2,))
    assert "needs a CUDA device" in done.stderr and not list(tmp_path.iterdir())


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
