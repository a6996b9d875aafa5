"""The accuracy-comparison harness (greedyprune.evaluate) and its pytest helper: answer
normalization and scoring, the JSONL reader, the comparison over a scripted answerer, and a
real (tiny, random-weight) LLaVA through HFAnswerer."""
import csv
import io
import json
import sys
import types

import numpy as np

import pytest
from PIL import Image

from greedyprune import PruneConfig
from greedyprune import evaluate
from greedyprune.evaluate import Answer, Record, compare, normalize_answer, vqa_accuracy
from greedyprune.testing import assert_agreement
from greedyprune.testing import greedyprune_agreement  # noqa: F401  (the plugin's fixture, without installing)


# --- normalization and scoring ----------------------------------------------------------------


@pytest.mark.parametrize("raw, normalized", [
    ("Two dogs.", "2 dogs"),
    ("  A  Cat ", "cat"),
    ("The T-shirt!", "t shirt"),
    ("1,000", "1000"),
    ("3.5 m", "3.5 m"),
    ("Yes.", "yes"),
    ("don't", "dont"),
    ("None", "0"),
    ("an apple, a pear", "apple pear"),
    ("Red/white", "red white"),
])
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_normalize_answer_wants_text():
    with pytest.raises(TypeError, match="text must be a string"):
        normalize_answer(3)


def test_vqa_accuracy():
    ten = ["2"] * 2 + ["two"] * 1 + ["3"] * 7
    assert vqa_accuracy("Two", ten) == 1.0            # 3 matches after normalization
    assert vqa_accuracy("2", ["2", "2"] + ["3"] * 8) == pytest.approx(2 / 3)
    assert vqa_accuracy("4", ten) == 0.0
    assert vqa_accuracy("the cat", ["Cat"]) == 1.0   # one reference: exact match
    assert vqa_accuracy("cat", ["cat", "dog"]) == 0.5
    assert vqa_accuracy("cat", "cat") == 1.0
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("cat", [])


# --- records ----------------------------------------------------------------------------------


def write_cases(folder, cases):
    Image.new("RGB", (32, 32), (90, 120, 200)).save(folder / "blue.png")
    path = folder / "cases.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in cases) + "\n\n")
    return path


def test_load_records(tmp_path):
    path = write_cases(tmp_path, [
        {"image": "blue.png", "question": "Color?", "answers": ["blue", "Blue"]},
        {"image": str(tmp_path / "blue.png"), "question": "Shape?", "answer": "square", "id": "q2"},
        {"image": "blue.png", "question": "Size?"},
    ])
    records = evaluate.load_records(path)
    assert [r.id for r in records] == ["1", "q2", "3"]
    assert records[0].image == str(tmp_path / "blue.png")
    assert records[1].answers == ["square"] and records[2].answers is None
    assert len(evaluate.load_records(path, limit=2)) == 2


@pytest.mark.parametrize("line, words", [
    ('{"image": "blue.png"}', "missing question"),
    ('{"image": "nope.png", "question": "q"}', "does not exist"),
    ('{"image": "blue.png", "question": "q", "answers": []}', "answers must be"),
    ("[1, 2]", "JSON object"),
    ("{oops", "not valid JSON"),
])
def test_load_records_names_the_bad_line(tmp_path, line, words):
    path = write_cases(tmp_path, [{"image": "blue.png", "question": "ok"}])
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ValueError, match=f"cases.jsonl:3: .*{words}"):
        evaluate.load_records(path)


# --- the comparison, with a scripted answerer --------------------------------------------------


class Scripted:
    """Answers "blue" unpruned; under pruning, "blue" when keep >= 32, else "green" (random)
    or "blue" (other methods). Prefill time shrinks with the budget."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, question, method, keep):
        self.calls.append((method, keep))
        assert isinstance(image, Image.Image)
        if method is None:
            return Answer("Blue.", 0.100, 64, 64)
        text = "green" if (method == "random" and keep < 32) else "blue"
        return Answer(text, 0.100 * keep / 64, 64, keep)


def cases():
    image = Image.new("RGB", (8, 8))
    return [Record(image, "Color?", ["blue"] * 3, id="a"),
            {"image": image, "question": "Color again?", "answers": ["green"]},
            Record(image, "Anything?")]


def test_compare_answers_every_configuration_and_summarizes():
    answerer = Scripted()
    report = compare(answerer, cases(), ["greedyprune", "random"], [16, 32], progress=False)
    assert len(answerer.calls) == 3 * (1 + 2 * 2)
    assert answerer.calls[:5] == [(None, None), ("greedyprune", 16), ("greedyprune", 32),
                                  ("random", 16), ("random", 32)]
    rows = {(r["method"], r["keep"]): r for r in report.rows}
    assert list(rows)[0] == ("unpruned", "all")
    assert rows[("unpruned", "all")]["agreement"] == 1.0
    assert rows[("unpruned", "all")]["accuracy"] == pytest.approx(0.5)   # 2 scored cases
    assert rows[("random", 16)]["agreement"] == 0.0
    assert rows[("random", 16)]["accuracy"] == pytest.approx(0.5)
    assert rows[("greedyprune", 16)]["agreement"] == 1.0
    assert rows[("greedyprune", 16)]["speedup"] == pytest.approx(4.0)
    assert rows[("greedyprune", 32)]["tokens_after"] == 32
    assert report.agreement("random", 32) == 1.0
    with pytest.raises(KeyError):
        report.agreement("random", 8)


def test_tables_and_files(tmp_path):
    report = compare(Scripted(), cases(), ["greedyprune", "random"], [16, 32], progress=False,
                     model="scripted")
    markdown = report.table()
    assert markdown.splitlines()[0].startswith("| method | keep |")
    assert "| random | 16 | 3 | 0.500 | 0.000 | 25.0 | 4.00x | 64 | 16 |" in markdown
    rows = list(csv.DictReader(io.StringIO(report.table("csv"))))
    assert len(rows) == 5 and rows[0]["method"] == "unpruned"
    answers = list(csv.DictReader(io.StringIO(report.results_csv())))
    assert len(answers) == 15 and {"record", "answer", "agrees"} <= set(answers[0])
    paths = report.save(tmp_path / "out")
    assert set(paths) == {"summary.md", "summary.csv", "answers.csv", "settings.json",
                          "plot.png"}   # no categories in these records: no per-category CSV
    settings = json.loads(paths["settings.json"].read_text())
    configs = [PruneConfig(keep=keep, method=method).to_dict()
               for method in ("greedyprune", "random") for keep in (16, 32)]
    assert settings == {"model": "scripted", "records": 3, "settings": {
        "greedyprune": {"method": "greedyprune"}, "random": {"method": "random", "seeds": [0]}},
        "configs": [{"label": c["method"], **c} for c in configs]}
    assert report.config("random", 32) == PruneConfig(keep=32, method="random")
    with pytest.raises(KeyError, match="no configuration 'topk' at keep=16"):
        report.config("topk", 16)
    with Image.open(paths["plot.png"]) as plot:
        assert plot.format == "PNG" and plot.width > 300
    report.plot(tmp_path / "agreement.png", metric="agreement")
    with pytest.raises(ValueError, match="metric"):
        report.plot(tmp_path / "x.png", metric="speed")
    with pytest.raises(ValueError, match="fmt"):
        report.table("html")


class Optioned(Scripted):
    """Scripted, also taking options: the answer depends on the seed and on lam."""

    def __call__(self, image, question, method, keep, **options):
        self.calls.append((method, keep, options))
        if method is None:
            return Answer("blue", 0.1, 64, 64)
        if method == "random":
            return Answer("blue" if options["seed"] % 2 == 0 else "red", 0.05, 64, keep)
        return Answer("blue" if options.get("lam", 0.5) >= 0.5 else "red", 0.05, 64, keep)


def categorized():
    image = Image.new("RGB", (8, 8))
    return [Record(image, "Colour?", ["blue"], id=str(i), category=c)
            for i, c in enumerate(["colour", "count", "colour", "count"])]


def test_settings_seeds_and_categories():
    answerer = Optioned()
    report = compare(answerer, categorized(),
                     [evaluate.Setting("greedyprune", lam=0.25, saliency="cls"),
                      evaluate.Setting("greedyprune", lam=0.75, label="gp high"), "random"],
                     [8], seeds=[0, 1, 2], progress=False)
    assert report.methods == ["greedyprune(lam=0.25, saliency=cls)", "gp high", "random"]
    # Options reach the answerer; random runs once per seed, the others once.
    assert answerer.calls[1:6] == [("greedyprune", 8, {"lam": 0.25, "saliency": "cls"}),
                                   ("greedyprune", 8, {"lam": 0.75}),
                                   ("random", 8, {"seed": 0}), ("random", 8, {"seed": 1}),
                                   ("random", 8, {"seed": 2})]
    rows = {r["method"]: r for r in report.rows}
    assert rows["gp high"]["accuracy"] == 1.0 and rows["greedyprune(lam=0.25, saliency=cls)"][
        "accuracy"] == 0.0
    assert rows["random"]["answers"] == 12 and rows["random"]["accuracy"] == pytest.approx(2 / 3)
    assert rows["random"]["accuracy_sd"] == pytest.approx(np.std([1, 0, 1], ddof=1))
    assert "accuracy_sd" not in rows["gp high"]
    assert report.categories() == ["colour", "count"]
    by = {(r["method"], r["category"]): r for r in report.summary_by_category()}
    assert by["unpruned", "count"]["answers"] == 2 and by["random", "colour"]["answers"] == 6
    wide = report.table_by_category()
    assert wide.splitlines()[0] == "| method | keep | colour | count |"
    assert "| gp high | 8 | 1.000 (1.00) | 1.000 (1.00) |" in wide
    assert "accuracy_sd" in report.table().splitlines()[0]
    assert report.settings["random"] == {"method": "random", "seeds": [0, 1, 2]}
    assert report.config("greedyprune(lam=0.25, saliency=cls)", 8) == PruneConfig(
        keep=8, lam=0.25, saliency="cls")


def test_saved_files_with_categories(tmp_path):
    report = compare(Optioned(), categorized(), ["random"], [8], seeds=[0, 1], progress=False)
    paths = report.save(tmp_path)
    rows = list(csv.DictReader(open(paths["summary_by_category.csv"])))
    assert [(r["method"], r["category"]) for r in rows] == [
        ("unpruned", "colour"), ("unpruned", "count"), ("random", "colour"), ("random", "count")]
    assert "Accuracy by category" in paths["summary.md"].read_text()
    answers = list(csv.DictReader(open(paths["answers.csv"])))
    assert {a["seed"] for a in answers if a["method"] == "random"} == {"0", "1"}
    assert {a["category"] for a in answers} == {"colour", "count"}


# --- the report in a notebook -----------------------------------------------------------------


@pytest.fixture
def other_backend():
    """A non-interactive backend other than Agg as the process's, restored afterwards: a plot
    that switched the backend (to Agg, say) would leave another one behind."""
    matplotlib = pytest.importorskip("matplotlib")
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(previous)


def test_plot_returns_a_figure_and_leaves_pyplot_alone(tmp_path, other_backend):
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    report = compare(Scripted(), cases(), ["greedyprune", "random"], [16, 32], progress=False,
                     model="scripted")
    figures_before = plt.get_fignums()
    figure = report.plot()
    assert isinstance(figure, Figure) and figure.canvas.manager is None  # not pyplot's
    assert matplotlib.get_backend() == other_backend
    assert plt.get_fignums() == figures_before
    assert list(tmp_path.iterdir()) == []  # no path: nothing written
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {"greedyprune", "random", "unpruned"}
    assert list(lines["random"].get_xdata()) == [16, 32]
    assert list(lines["random"].get_ydata()) == [report.rows[3]["accuracy"],
                                                 report.rows[4]["accuracy"]]
    # Shown inline as a picture by IPython's formatter, as a Jupyter kernel does, and still
    # without pyplot or a backend switch.
    from IPython.core.formatters import DisplayFormatter

    shown, _ = DisplayFormatter().format(figure)
    assert shown["image/png"].startswith(b"\x89PNG\r\n") and "text/html" not in shown
    assert matplotlib.get_backend() == other_backend and plt.get_fignums() == figures_before
    saved = report.plot(tmp_path / "sub" / "agreement.png", metric="agreement")
    assert isinstance(saved, Figure) and matplotlib.get_backend() == other_backend
    with Image.open(tmp_path / "sub" / "agreement.png") as picture:
        assert picture.format == "PNG"
    agreement = {line.get_label(): list(line.get_ydata()) for line in saved.axes[0].get_lines()}
    assert agreement["greedyprune"] == [1.0, 1.0] and agreement["random"] == [0.0, 1.0]


def test_plot_without_matplotlib_names_an_extra_that_exists(monkeypatch):
    import tomllib
    from pathlib import Path

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "greedyprune._figure", raising=False)
    report = compare(Scripted(), cases(), ["random"], [16], progress=False)
    with pytest.raises(ImportError) as error:
        report.plot()
    message = str(error.value)
    assert message == ("Report.plot needs matplotlib: pip install matplotlib "
                       "(or greedyprune[viz])")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert "matplotlib" in extras["viz"]


def test_report_shows_as_its_tables_in_a_notebook():
    report = compare(Scripted(), cases(), ["greedyprune", "random"], [16, 32], progress=False,
                     model="scripted")
    markdown = report._repr_markdown_()
    assert markdown == "**scripted**, 3 cases\n\n" + report.table()
    assert "| random | 16 | 3 | 0.500 | 0.000 | 25.0 | 4.00x | 64 | 16 |" in markdown
    assert repr(report) == ("Report(model='scripted', cases=3, methods=['greedyprune', "
                            "'random'], keeps=[16, 32], answers=15)")
    categorized_report = compare(Optioned(), categorized(), ["random"], [8], seeds=[0, 1],
                                 progress=False)
    markdown = categorized_report._repr_markdown_()
    assert markdown.startswith("**model**, 4 cases\n\n")
    assert categorized_report.table_by_category() in markdown


def test_to_pandas_builds_the_summary_frame(monkeypatch):
    report = compare(Optioned(), categorized(), ["random"], [8], seeds=[0, 1], progress=False)
    calls = []
    fake = types.ModuleType("pandas")
    fake.DataFrame = types.SimpleNamespace(
        from_records=lambda data, columns: calls.append((data, columns)) or "frame")
    monkeypatch.setitem(sys.modules, "pandas", fake)
    assert report.to_pandas() == "frame"
    (data, columns), = calls
    assert data == report.rows
    assert columns == report.table("csv").splitlines()[0].split(",")  # the table's columns


def test_to_pandas_without_pandas_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    report = compare(Scripted(), cases(), ["random"], [16], progress=False)
    with pytest.raises(ImportError, match=r"^Report.to_pandas needs pandas: pip install pandas$"):
        report.to_pandas()


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(seeds=[]), ValueError, "seeds must be non-negative integers"),
    (dict(seeds=[-1]), ValueError, "seeds must be non-negative integers"),
    (dict(methods=[3]), TypeError, "methods must hold method names or Setting objects"),
    (dict(methods=["random", evaluate.Setting("topk", label="random")]), ValueError,
     "distinct names"),
])
def test_compare_checks_settings_and_seeds(kwargs, error, words):
    args = dict(methods=["random"], keep=[8])
    args.update(kwargs)
    with pytest.raises(error, match=words):
        compare(Optioned(), categorized(), progress=False, **args)


def test_compare_sweeps_lam_and_saliency_and_labels_each_configuration():
    answerer = Optioned()
    report = compare(answerer, categorized()[:1], ["greedyprune", "topk", "divprune"], [8],
                     lam=[0.25, 0.5], saliency=["cls", "none", "query"], progress=False)
    assert report.methods == ["greedyprune λ=0.25 cls", "greedyprune λ=0.5 cls",
                              "greedyprune none", "greedyprune λ=0.25 query",
                              "greedyprune λ=0.5 query", "topk cls", "topk query", "divprune"]
    assert answerer.calls[1:] == [
        ("greedyprune", 8, {"lam": 0.25, "saliency": "cls"}),
        ("greedyprune", 8, {"lam": 0.5, "saliency": "cls"}),
        ("greedyprune", 8, {"lam": 0.0, "saliency": "none"}),
        ("greedyprune", 8, {"lam": 0.25, "saliency": "query"}),
        ("greedyprune", 8, {"lam": 0.5, "saliency": "query"}),
        ("topk", 8, {"saliency": "cls"}), ("topk", 8, {"saliency": "query"}), ("divprune", 8, {})]
    rows = {r["method"]: r["accuracy"] for r in report.rows}
    assert rows["greedyprune λ=0.25 cls"] == 0.0 and rows["greedyprune λ=0.5 cls"] == 1.0
    assert report.config("greedyprune λ=0.25 query", 8) == PruneConfig(keep=8, lam=0.25,
                                                                         saliency="query")
    # One value is a sweep of one; None leaves the option to the answerer.
    assert [s.name for s in evaluate.sweep(["greedyprune"], lam=0.5)] == ["greedyprune λ=0.5"]
    assert [s.name for s in evaluate.sweep(["greedyprune", "cdpruner"], saliency="text")] == [
        "greedyprune text", "cdpruner text"]
    assert [s.name for s in evaluate.sweep(["greedyprune", "topk"])] == ["greedyprune", "topk"]


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(lam=[0.5, 1.5]), ValueError, r"lam must be in \[0, 1\], got 1.5"),
    (dict(lam=[]), TypeError, "lam must be one value or a non-empty list of them"),
    (dict(lam=["0.5"]), ValueError, r"lam must be a number in \[0, 1\] or 'auto', got '0.5'"),
    (dict(lam=[None]), TypeError, "lam must be one value or a non-empty list of them"),
    (dict(lam=[0.5, 0.5]), ValueError, "lam holds 0.5 more than once"),
    (dict(saliency=["cls", "attention"]), ValueError,
     "saliency must hold values from 'text', 'cls', 'query', 'none', got 'attention'"),
    (dict(saliency="none", methods=["topk"]), ValueError, "method 'topk' needs saliency"),
])
def test_a_bad_sweep_is_refused_before_any_answer(kwargs, error, words):
    answerer = Optioned()
    args = dict(methods=["greedyprune", "topk"], keep=[8])
    args.update(kwargs)
    with pytest.raises(error, match=words):
        compare(answerer, categorized(), progress=False, **args)
    assert answerer.calls == []


def test_progress_bar_goes_to_stderr(capsys):
    compare(Scripted(), cases()[:1], ["random"], [16], progress=True)
    assert "answering" in capsys.readouterr().err


def test_progress_on_a_log_is_a_line_at_the_start_and_one_at_the_end(capsys):
    # Not a terminal (pytest's capture, a CI log): no redraw every tenth of a second.
    compare(Scripted(), cases() * 40, ["greedyprune", "random"], [16, 32], progress=True)
    err = capsys.readouterr().err
    assert err.count("answering:") == 2 and err.endswith("\n") and err.count("\n") == 1
    assert " 0/600 " in err and " 600/600 " in err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_style_follows_where_it_is_shown(monkeypatch):
    from tqdm import tqdm
    from tqdm.notebook import IProgress, tqdm as notebook_tqdm

    bar, options = evaluate._bar_style(Terminal())
    assert bar is tqdm and options["dynamic_ncols"] and "mininterval" not in options
    bar, options = evaluate._bar_style(io.StringIO())   # a file, a pipe
    assert bar is tqdm and options["mininterval"] == 60.0
    assert not evaluate._in_jupyter_kernel()
    monkeypatch.setattr(evaluate, "_in_jupyter_kernel", lambda: True)
    bar, options = evaluate._bar_style(io.StringIO())
    # A widget where ipywidgets is installed; else a text bar that Jupyter redraws in place.
    assert (bar, options) == ((notebook_tqdm, {}) if IProgress is not None
                              else (tqdm, {"file": options["file"]}))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(methods=["fastv"]), ValueError, "unknown method 'fastv'"),
    (dict(keep=[0]), ValueError, "keep must be"),
    (dict(keep=[1.5]), ValueError, "keep must be"),
    (dict(keep=True), ValueError, "keep must be .* got True"),
    (dict(keep="64"), ValueError, "keep must be .* got '64'"),
    (dict(keep=[16, 0.5]), ValueError, "not mixed|all token counts or all fractions"),
    (dict(keep=[]), ValueError, "at least one budget"),
    (dict(keep=[16], keeps=[16]), TypeError, r"compare\(\) got both keep and keeps"),
    (dict(records=[]), ValueError, "at least one case"),
])
def test_compare_checks_arguments_before_answering(kwargs, error, words):
    answerer = Scripted()
    args = dict(records=cases(), methods=["greedyprune"], keep=[16])
    args.update(kwargs)
    with pytest.raises(error, match=words):
        compare(answerer, args.pop("records"), progress=False, **args)
    assert answerer.calls == []


def test_keep_is_the_budget_everywhere_and_keeps_still_works_with_a_warning():
    # The word attach() and --keep use: one budget or several, by keyword or in place.
    one = compare(Scripted(), cases(), ["random"], keep=16, progress=False)
    several = compare(Scripted(), cases(), ["random"], [16, 32], progress=False)
    assert one.keeps == [16] and several.keeps == [16, 32]
    assert one.rows == several.rows[:2]
    with pytest.warns(DeprecationWarning, match=r"compare\(keeps=\.\.\.\) is deprecated: pass "
                                                r"keep=\[\.\.\.\]"):
        old = compare(Scripted(), cases(), ["random"], keeps=[16, 32], progress=False)
    assert old.rows == several.rows
    assert compare(Scripted(), cases(), progress=False).keeps == [64, 128, 192]  # the default


def test_demo_run_takes_keep_and_keeps_with_a_warning():
    from greedyprune import demo

    # Checked before the model (None) is touched.
    with pytest.raises(ValueError, match="^keep must be token counts .* got 0$"):
        demo.run(None, None, keep=0)
    with pytest.warns(DeprecationWarning, match=r"run\(keeps=\.\.\.\) is deprecated"):
        with pytest.raises(ValueError, match="^keep must hold at least one budget$"):
            demo.run(None, None, keeps=[])


def test_assert_agreement_passes_and_fails_with_the_changed_cases():
    report = assert_agreement(Scripted(), cases(), method="greedyprune", keep=16, at_least=1.0)
    assert report.agreement("greedyprune", 16) == 1.0
    with pytest.raises(AssertionError, match=r"random at keep=16 agrees .* on 0\.0% of 3 cases"
                                             r"(.|\n)*case a: unpruned 'Blue.', pruned 'green'"):
        assert_agreement(Scripted(), cases(), method="random", keep=16, at_least=0.5)
    with pytest.raises(ValueError, match="at_least"):
        assert_agreement(Scripted(), cases(), at_least=2)


def test_fixture_is_the_helper(greedyprune_agreement):
    assert greedyprune_agreement is assert_agreement


# --- a real model: tiny random-weight LLaVA through HFAnswerer ---------------------------------


@pytest.fixture(scope="module")
def tiny_llava():
    pytest.importorskip("transformers")
    from greedyprune import demo

    return demo.random_llava("tiny"), demo.random_llava_processor()


def test_hf_answerer_unpruned_and_pruned(tiny_llava):
    model, processor = tiny_llava
    answerer = evaluate.HFAnswerer(model, processor, max_new_tokens=4)
    image = Image.new("RGB", (50, 40), (200, 30, 30))
    full = answerer(image, "What color?")
    assert full.tokens_before == full.tokens_after == 576 and full.prefill_seconds > 0
    pruned = answerer(image, "What color?", "greedyprune", 16)
    assert (pruned.tokens_before, pruned.tokens_after) == (576, 16)
    assert isinstance(pruned.text, str)
    ratio = answerer(image, "What color?", "uniform", 0.25)
    assert ratio.tokens_after == 144
    # Keeping every token is no pruning at all: the answer cannot change.
    assert answerer(image, "What color?", "random", 576).text == full.text
    from greedyprune.hf._handle import ATTRIBUTE

    assert getattr(model.model, ATTRIBUTE, None) is None  # detached after each answer
    assert answerer(image, "What color?").text == full.text


def test_assert_agreement_on_a_model(tiny_llava):
    model, processor = tiny_llava
    image = Image.new("RGB", (40, 40), (20, 160, 30))
    assert_agreement(evaluate.HFAnswerer(model, processor, max_new_tokens=3),
                     [{"image": image, "question": "Color?"}], keep=576, at_least=1.0)


def test_hf_answerer_options_override_its_own(tiny_llava):
    model, processor = tiny_llava
    answerer = evaluate.HFAnswerer(model, processor, max_new_tokens=2, saliency="text")
    image = Image.new("RGB", (40, 40), (20, 160, 30))
    answerer(image, "Color?", "greedyprune", 8, saliency="query", lam=0.9)
    assert [r.tokens_after for r in answerer.last] == [8]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # saliency="none": lam is irrelevant, so no warning
        answerer(image, "Color?", "greedyprune", 8, saliency="none", lam=0.9)
    answerer(image, "Color?")
    assert answerer.last == ()
    with pytest.raises(TypeError, match=r"unexpected options \['temperature'\]"):
        answerer(image, "Color?", "greedyprune", 8, temperature=0.5)
