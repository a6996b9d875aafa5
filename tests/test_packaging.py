"""The package around the code: one version everywhere, its metadata and license, a cheap import
(the pytest plugin included), a clear error from an unbuilt checkout, show_config(), and builds
with and without OpenMP that never reuse each other's objects."""
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import greedyprune
from greedyprune import _core

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run_python(code, cwd=ROOT, env=None, timeout=120):
    """Run ``code`` in a fresh interpreter in ``cwd`` (first on sys.path, so the checkout there
    is what ``import greedyprune`` finds)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def copy_sources(destination):
    """The files a build needs, without any built extension, cache or bundled model."""
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, destination / name)
    shutil.copytree(ROOT / "csrc", destination / "csrc")
    shutil.copytree(ROOT / "greedyprune", destination / "greedyprune",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "data"))


# --- version and metadata ---------------------------------------------------------------------


def test_one_version_everywhere():
    header = (ROOT / "csrc" / "greedyprune.h").read_text()
    parts = [int(re.search(rf"#define GP_VERSION_{part} (\d+)", header).group(1))
             for part in ("MAJOR", "MINOR", "PATCH")]
    assert greedyprune.__version__ == "{}.{}.{}".format(*parts)
    assert _core.VERSION_NUMBER == parts[0] * 10000 + parts[1] * 100 + parts[2]
    assert greedyprune.config_info()["c_core"]["version"] == greedyprune.__version__
    # pyproject.toml takes the version from greedyprune/__init__.py, without importing it:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "greedyprune.__version__"}
    built = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, text=True,
                           capture_output=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip().splitlines()[-1] == greedyprune.__version__
    try:
        installed = importlib.metadata.version("greedyprune")
    except importlib.metadata.PackageNotFoundError:
        return
    assert installed == greedyprune.__version__, "the installed metadata is stale: reinstall"


def test_license_and_project_urls():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert set(project["urls"]) == {"Homepage", "Repository", "Documentation", "Issues"}
    assert all(url.startswith("https://github.com/greedyprune/greedyprune")
               for url in project["urls"].values())
    assert "include LICENSE" in (ROOT / "MANIFEST.in").read_text()


def test_transformers_range_is_declared_where_it_is_needed():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in ("hf", "eval"):
        assert "transformers>=5.24,<6" in extras[extra], extra


# --- importing --------------------------------------------------------------------------------


def test_the_pytest_plugin_loads_nothing_of_greedyprune_until_its_fixture_is_used():
    assert PYPROJECT["project"]["entry-points"]["pytest11"] == {
        "greedyprune": "_greedyprune_pytestplugin"}
    assert PYPROJECT["tool"]["setuptools"]["py-modules"] == ["_greedyprune_pytestplugin"]
    result = run_python("""
        import sys
        import _greedyprune_pytestplugin as plugin
        heavy = ["greedyprune", "numpy", "torch", "transformers"]
        print([name for name in heavy if name in sys.modules])
        from greedyprune.testing import assert_agreement, greedyprune_agreement
        print(greedyprune_agreement is plugin.greedyprune_agreement,
              plugin.greedyprune_agreement.__wrapped__() is assert_agreement,
              "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "True True False"]


def test_importing_greedyprune_loads_its_openmp_runtime_for_threadpoolctl():
    pytest.importorskip("threadpoolctl")
    if not greedyprune.has_openmp:
        pytest.skip("built without OpenMP")
    result = run_python("""
        import os, greedyprune, threadpoolctl
        from greedyprune import _core
        ours = os.path.realpath(_core.build_info()["openmp_library"])
        print(ours in [os.path.realpath(i["filepath"]) for i in threadpoolctl.threadpool_info()])
        with threadpoolctl.threadpool_limits(1, "openmp"):  # before any call of greedyprune
            print(greedyprune.get_num_threads())
    """, env={"OMP_NUM_THREADS": "2", "GREEDYPRUNE_NUM_THREADS": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "1"]


def test_an_unbuilt_checkout_says_how_to_build_it(tmp_path):
    copy_sources(tmp_path)
    for code in ("import greedyprune", "import greedyprune.testing",
                 "from greedyprune import select"):
        result = run_python(code, cwd=tmp_path)
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last == ("ImportError: greedyprune: the C extension is not built; run `pip install "
                        "-e .` in the source checkout (or `python setup.py build_ext --inplace`)")
        assert "circular" not in result.stderr


# --- show_config ------------------------------------------------------------------------------


def test_show_config_prints_what_a_bug_report_needs():
    info = greedyprune.config_info()
    out = io.StringIO()
    assert greedyprune.show_config(file=out) is None
    text = out.getvalue()
    assert text.startswith(f"greedyprune {greedyprune.__version__} (")
    for label in ("C core", "SIMD", "OpenMP", "Threads", "Platform", "Python", "numpy"):
        assert re.search(rf"^  {label}: +\S", text, re.M), label
    assert info["c_core"]["simd"] in text and info["c_core"]["compiler"] in text
    threads = info["threads"]
    assert f"Threads:       {threads['default']} by default ({threads['source']})" in text
    assert threads["default"] == greedyprune.get_num_threads()
    assert info["openmp"]["enabled"] is greedyprune.has_openmp
    if greedyprune.has_openmp:
        assert re.search(r"OpenMP: +yes, OpenMP \d", text)
        assert info["c_core"]["flags"].split()[-1] in ("-fopenmp", "/openmp")
    for name, version in info["packages"].items():
        assert f"{name}:" in text and version in text
    assert info["packages"]["numpy"] == __import__("numpy").__version__


def test_show_config_does_not_import_torch_or_transformers():
    result = run_python("""
        import sys, greedyprune
        greedyprune.show_config()
        print("imported:", [m for m in ("torch", "transformers") if m in sys.modules])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("imported: []")
    assert "Threads:" in result.stdout


def test_simd_variant_names_the_load_time_choice_or_the_compile_time_target():
    simd = _core.build_info()["simd"]
    assert "chosen at load time" in simd or "the compile-time target" in simd


# --- building ---------------------------------------------------------------------------------


def _build(tree, **env):
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree,
                          text=True, capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, **env})


def test_serial_and_openmp_builds_never_reuse_each_others_objects(tmp_path):
    """One build folder, three builds: OpenMP, then serial (GREEDYPRUNE_NO_OPENMP=1, which must
    not link the OpenMP objects or keep the OpenMP extension), then OpenMP again."""
    if not greedyprune.has_openmp:
        pytest.skip("this compiler builds no OpenMP extension")
    copy_sources(tmp_path)
    probe = """
        import warnings, numpy as np, greedyprune
        from greedyprune import _core
        print(_core.HAS_OPENMP, _core.build_info()["flags"])
        greedyprune.show_config()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                greedyprune.select(np.eye(4), 2, num_threads=2)
        print("warnings:", [str(w.message) for w in caught])
    """
    done = _build(tmp_path)
    assert done.returncode == 0, done.stderr
    assert run_python(probe, cwd=tmp_path).stdout.startswith("1 -O3 -std=c99 -fopenmp\n")

    done = _build(tmp_path, GREEDYPRUNE_NO_OPENMP="1")
    assert done.returncode == 0, done.stderr
    reason = "GREEDYPRUNE_NO_OPENMP was set when it was built"
    assert (f"WARNING: greedyprune: building the C core without OpenMP, so it runs on one "
            f"thread: {reason}.") in done.stderr
    serial = run_python(probe, cwd=tmp_path)
    assert serial.returncode == 0, serial.stderr
    assert serial.stdout.startswith("0 -O3 -std=c99\n")
    assert f"OpenMP:        no ({reason}): every call runs on one thread" in serial.stdout
    assert "Threads:       1 by default (built without OpenMP)" in serial.stdout
    assert serial.stdout.strip().splitlines()[-1] == "warnings: " + repr([
        f"greedyprune was built without OpenMP, so it runs on one thread, not 2: {reason} "
        "(see greedyprune.show_config())"])

    done = _build(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "without OpenMP" not in done.stderr
    assert run_python(probe, cwd=tmp_path).stdout.startswith("1 -O3 -std=c99 -fopenmp\n")
