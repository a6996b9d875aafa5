"""examples/quickstart.ipynb, run as a user runs it: top to bottom in a real Jupyter kernel
(this interpreter's, through nbclient), then its outputs read the way a notebook shows them:
the answers, the kept-token picture and the plot as PNG images, the report as a table, the
DataFrame as HTML, one progress bar, and the user's test passing."""
import base64
import io
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("pandas")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after a run in a kernel of this interpreter (a kernelspec made here, so
    that no other installed "python3" kernel is picked), with this checkout importable."""
    kernels = tmp_path_factory.mktemp("jupyter") / "kernels" / "greedyprune-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "greedyprune tests", "language": "python"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(kernels.parents[1]))
        patch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="greedyprune-test",
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    return {cell.id: cell for cell in notebook.cells}


def _picture(output) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))


def _result(cell):
    (result,) = [o for o in cell.outputs if o.output_type == "execute_result"]
    return result


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_the_repository_holds_the_notebook_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_every_cell_runs_in_order_without_an_error(executed):
    code = [cell for cell in executed.values() if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]


def test_the_question_is_answered_with_and_without_pruning(executed):
    assert "(reference answer: blue)" in _stdout(executed["scene"])
    assert _picture(_result(executed["scene"])).size == (192, 192)
    assert _stdout(executed["answers"]).splitlines() == ["unpruned: blue", "keep=16:  blue"]
    assert "tokens 144 -> 16" in _result(executed["answers"])["data"]["text/plain"]


def test_the_kept_tokens_show_as_a_picture(executed):
    picture = _picture(_result(executed["picture"]))
    assert picture.format == "PNG" and picture.size == (3 * 192, 3 * 192)


def test_the_comparison_shows_its_table_one_progress_bar_and_its_plot(executed):
    compared = executed["compare"]
    table = _result(compared)["data"]["text/markdown"]
    for label in ("unpruned | all", "greedyprune λ=0.0 | 9", "greedyprune λ=1.0 | 36",
                  "divprune | 36", "random | 9"):
        assert f"| {label} | 6 |" in table
    # One bar, updated in place (a widget), not a line per answer.
    bars = [o for o in compared.outputs if o.output_type != "execute_result"]
    assert len(bars) == 1 and "answering" in bars[0]["data"]["text/plain"], bars
    assert "application/vnd.jupyter.widget-view+json" in bars[0]["data"]
    plot = _result(executed["plot"])
    assert _picture(plot).size == (768, 504)    # 6.4 x 4.2 inches at 120 dpi
    assert plot["data"]["text/plain"].startswith("<InlineFigure size 768x504")


def test_the_report_becomes_a_dataframe(executed):
    html = _result(executed["frame"])["data"]["text/html"]
    assert html.count("<tr") == 1 + 11 and "greedyprune λ=0.5" in html   # header, 11 rows
    for column in ("method", "keep", "accuracy", "agreement", "prefill_ms", "speedup"):
        assert f"<th>{column}</th>" in html


def test_the_users_test_passes(executed):
    assert _stdout(executed["test"]) == "test_pruning_keeps_my_answers passed\n"
