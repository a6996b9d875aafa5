"""The result of :func:`greedyprune.evaluate.compare`: every answer (:class:`Result`) and the
:class:`Report` that summarizes them: tables (Markdown, CSV, by category), a plot, the files a
run saves, the :class:`~greedyprune.PruneConfig` behind each configuration, and a notebook view
(the summary table) with ``to_pandas()``.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

if TYPE_CHECKING:
    from .config import PruneConfig

#: The method label of the answers given without pruning.
UNPRUNED = "unpruned"

#: A budget: visual tokens kept per image (an int) or the kept fraction of them (a float).
Budget = Union[int, float]


def _is_ratio(keep: Any) -> bool:
    return isinstance(keep, float) and 0.0 < keep < 1.0


def budget_arguments(keep: Union[int, float]) -> Dict[str, Any]:
    """The budget as :func:`greedyprune.hf.attach` takes it: ``keep`` for a token count,
    ``keep_ratio`` for a fraction."""
    return {"keep_ratio": keep} if _is_ratio(keep) else {"keep": keep}



@dataclass
class Result:
    """One answer: a record under one configuration (``method == "unpruned"``: no pruning)."""

    record: str
    method: str
    keep: Optional[Union[int, float]]
    answer: str
    agrees: bool
    accuracy: Optional[float] = None
    prefill_seconds: Optional[float] = None
    tokens_before: Optional[int] = None
    tokens_after: Optional[int] = None
    category: str = ""
    seed: Optional[int] = None


@dataclass
class Report:
    """All answers of a :func:`compare` run, with summaries, tables and a plot."""

    results: List[Result]
    methods: List[str]
    keeps: List[Union[int, float]]
    model: str = ""
    #: How each method label was produced: its method name and options, and the seeds.
    settings: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    rows: List[Dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.summary()

    def summary(self) -> List[Dict[str, Any]]:
        """One row per configuration (unpruned first): answers, mean accuracy (None without
        references), agreement with the unpruned answers, median prefill time, mean visual
        tokens before and after, and the prefill speed-up over unpruned (median / median)."""
        configs = [(UNPRUNED, None)] + [(m, k) for m in self.methods for k in self.keeps]
        rows = []
        for method, keep in configs:
            chosen = [r for r in self.results if r.method == method and r.keep == keep]
            if not chosen:
                continue
            scored = [r.accuracy for r in chosen if r.accuracy is not None]
            times = [r.prefill_seconds for r in chosen if r.prefill_seconds is not None]
            before = [r.tokens_before for r in chosen if r.tokens_before is not None]
            after = [r.tokens_after for r in chosen if r.tokens_after is not None]
            row: Dict[str, Any] = {
                "method": method,
                "keep": "all" if keep is None else keep,
                "answers": len(chosen),
                "accuracy": statistics.fmean(scored) if scored else None,
                "agreement": statistics.fmean(r.agrees for r in chosen),
                "prefill_ms": statistics.median(times) * 1e3 if times else None,
                "tokens_before": statistics.fmean(before) if before else None,
                "tokens_after": statistics.fmean(after) if after else None,
            }
            seeds = sorted({r.seed for r in chosen if r.seed is not None})
            if len(seeds) > 1:  # the spread of the per-seed means
                by_seed = [[r for r in chosen if r.seed == s] for s in seeds]
                if scored:
                    row["accuracy_sd"] = statistics.stdev(
                        statistics.fmean(r.accuracy for r in group if r.accuracy is not None)
                        for group in by_seed)
                row["agreement_sd"] = statistics.stdev(
                    statistics.fmean(r.agrees for r in group) for group in by_seed)
            rows.append(row)
        base = rows[0]["prefill_ms"] if rows and rows[0]["method"] == UNPRUNED else None
        for row in rows:
            row["speedup"] = (base / row["prefill_ms"]) if base and row["prefill_ms"] else None
        return rows

    def categories(self) -> List[str]:
        """The records' categories, in order of first appearance (empty when none is set)."""
        return list(dict.fromkeys(r.category for r in self.results if r.category))

    def summary_by_category(self) -> List[Dict[str, Any]]:
        """One row per configuration and category: answers, mean accuracy, agreement."""
        rows = []
        for row in self.rows:
            keep = None if row["keep"] == "all" else row["keep"]
            for category in self.categories():
                chosen = [r for r in self.results if r.method == row["method"] and r.keep == keep
                          and r.category == category]
                scored = [r.accuracy for r in chosen if r.accuracy is not None]
                rows.append({"method": row["method"], "keep": row["keep"], "category": category,
                             "answers": len(chosen),
                             "accuracy": statistics.fmean(scored) if scored else None,
                             "agreement": statistics.fmean(r.agrees for r in chosen)})
        return rows

    def agreement(self, method: str, keep: Union[int, float]) -> float:
        """Share of records whose answer under (method, keep) equals the unpruned answer."""
        for row in self.rows:
            if row["method"] == method and row["keep"] == keep:
                return row["agreement"]
        raise KeyError(f"no results for method {method!r} at keep {keep!r}")

    def table(self, fmt: str = "markdown") -> str:
        """The summary as a markdown table (``fmt="markdown"``) or CSV (``fmt="csv"``)."""
        columns = self._columns()
        if fmt == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows({c: ("" if row.get(c) is None else row[c]) for c in columns}
                             for row in self.rows)
            return out.getvalue()
        if fmt != "markdown":
            raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")
        formats = {"accuracy": "{:.3f}", "agreement": "{:.3f}", "prefill_ms": "{:.1f}",
                   "speedup": "{:.2f}x", "tokens_before": "{:.0f}", "tokens_after": "{:.0f}",
                   "accuracy_sd": "{:.3f}", "agreement_sd": "{:.3f}"}
        return _markdown(columns, self.rows, formats)

    def _columns(self) -> List[str]:
        columns = ["method", "keep", "answers", "accuracy", "agreement", "prefill_ms",
                   "speedup", "tokens_before", "tokens_after"]
        return columns + [c for c in ("accuracy_sd", "agreement_sd")
                          if any(c in r for r in self.rows)]

    def table_by_category(self, fmt: str = "markdown") -> str:
        """Accuracy per category: markdown, one row per configuration and a column per
        category (agreement with the unpruned answer in parentheses); or CSV, one line per
        configuration and category."""
        rows = self.summary_by_category()
        if fmt == "csv":
            out = io.StringIO()
            columns = ["method", "keep", "category", "answers", "accuracy", "agreement"]
            writer = csv.DictWriter(out, columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows({c: ("" if row[c] is None else row[c]) for c in columns}
                             for row in rows)
            return out.getvalue()
        if fmt != "markdown":
            raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")
        wide: Dict[Any, Dict[str, Any]] = {}
        for row in rows:
            cell = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            wide.setdefault((row["method"], row["keep"]), {"method": row["method"],
                                                           "keep": row["keep"]})[
                row["category"]] = f"{cell} ({row['agreement']:.2f})"
        return _markdown(["method", "keep"] + self.categories(), list(wide.values()), {})

    def results_csv(self) -> str:
        """Every answer, one CSV line each."""
        out = io.StringIO()
        columns = list(Result.__dataclass_fields__)
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in asdict(r).items()}
                         for r in self.results)
        return out.getvalue()

    def plot(self, path: Union[str, Path, None] = None, metric: Optional[str] = None):
        """A matplotlib ``Figure`` of ``metric`` ("accuracy" or "agreement"; default accuracy
        when the records have references) against the budget, one line per method, the
        unpruned model dashed; saved as ``path`` (a PNG, or any format matplotlib writes) when
        given. The figure is built without pyplot, so the process's backend and pyplot's
        figures stay as they were, and Jupyter shows it inline when it is a cell's value.
        Needs matplotlib (``pip install matplotlib``, or the ``greedyprune[viz]`` extra)."""
        try:
            from ._figure import InlineFigure
        except ImportError:
            raise ImportError("Report.plot needs matplotlib: pip install matplotlib "
                              "(or greedyprune[viz])") from None
        if metric is None:
            metric = "accuracy" if self.rows and self.rows[0]["accuracy"] is not None else "agreement"
        if metric not in ("accuracy", "agreement"):
            raise ValueError(f"metric must be 'accuracy' or 'agreement', got {metric!r}")
        figure = InlineFigure(figsize=(6.4, 4.2), dpi=120)
        axes = figure.subplots()
        for method in self.methods:
            points = sorted((row["keep"], row[metric]) for row in self.rows
                            if row["method"] == method and row[metric] is not None)
            if points:
                axes.plot(*zip(*points), marker="o", label=method)
        base = [row[metric] for row in self.rows if row["method"] == UNPRUNED]
        if base and base[0] is not None:
            axes.axhline(base[0], color="gray", linestyle="--", label=UNPRUNED)
        ratio = any(_is_ratio(k) for k in self.keeps)
        axes.set_xlabel("kept fraction of visual tokens" if ratio
                        else "kept visual tokens per image")
        axes.set_ylabel(metric + (" with the unpruned answer" if metric == "agreement"
                                  else " (VQA)"))
        axes.set_ylim(-0.02, 1.02)
        axes.set_xticks(sorted(set(self.keeps)))
        axes.grid(alpha=0.3)
        axes.legend()
        axes.set_title(f"{self.model or 'model'}: {metric} vs budget ({self._cases()} cases)",
                       fontsize=10)
        figure.tight_layout()
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
        return figure

    def to_pandas(self):
        """The summary (:meth:`table`'s rows and columns) as a pandas ``DataFrame``. For every
        answer instead: ``pandas.DataFrame(map(dataclasses.asdict, report.results))``."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Report.to_pandas needs pandas: pip install pandas") from None
        return pandas.DataFrame.from_records(self.rows, columns=self._columns())

    def _repr_markdown_(self) -> str:
        """The summary tables, as Jupyter shows a report."""
        return (f"**{self.model or 'model'}**, {self._cases()} cases\n\n"
                + self._summary_markdown())

    def __repr__(self) -> str:
        return (f"Report(model={self.model!r}, cases={self._cases()}, "
                f"methods={self.methods}, keeps={self.keeps}, answers={len(self.results)})")

    def _cases(self) -> int:
        return len({r.record for r in self.results})

    def _summary_markdown(self) -> str:
        """:meth:`table`, then :meth:`table_by_category` when the records have categories."""
        markdown = self.table("markdown")
        if self.categories():
            markdown += ("\nAccuracy by category (agreement with the unpruned answer in "
                         "parentheses):\n\n" + self.table_by_category())
        return markdown

    def config(self, label: str, keep: Union[int, float], seed: int = 0) -> "PruneConfig":
        """The :class:`~greedyprune.PruneConfig` that produced the answers of method ``label``
        at budget ``keep`` (``seed``: which run of a seeded method)."""
        from .config import PruneConfig

        if label not in self.settings or keep not in self.keeps:
            raise KeyError(f"no configuration {label!r} at keep={keep!r} in this report")
        fields = {k: v for k, v in self.settings[label].items() if k != "seeds"}
        return PruneConfig(**budget_arguments(keep), seed=seed, **fields)

    def configs(self) -> List[Dict[str, Any]]:
        """Every configuration of the report as ``{"label", **PruneConfig.to_dict()}``."""
        seeds = {label: self.settings.get(label, {}).get("seeds", [0]) for label in self.methods}
        return [{"label": label, **self.config(label, keep, seed).to_dict()}
                for label in self.methods if label in self.settings
                for keep in self.keeps for seed in seeds[label]]

    def save(self, folder: Union[str, Path]) -> Dict[str, Path]:
        """Write ``summary.md``, ``summary.csv``, ``answers.csv``, ``settings.json`` (how each
        method label was produced), with categories ``summary_by_category.csv``, and (with
        matplotlib) ``plot.png`` into ``folder``; return their paths by name."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / name for name in
                 ("summary.md", "summary.csv", "answers.csv", "settings.json")}
        if self.categories():
            paths["summary_by_category.csv"] = folder / "summary_by_category.csv"
            paths["summary_by_category.csv"].write_text(self.table_by_category("csv"),
                                                        encoding="utf-8")
        paths["summary.md"].write_text(self._summary_markdown(), encoding="utf-8")
        paths["summary.csv"].write_text(self.table("csv"), encoding="utf-8")
        paths["answers.csv"].write_text(self.results_csv(), encoding="utf-8")
        paths["settings.json"].write_text(json.dumps(
            {"model": self.model, "records": self._cases(), "settings": self.settings,
             "configs": self.configs()}, indent=1) + "\n", encoding="utf-8")
        try:
            self.plot(folder / "plot.png")
            paths["plot.png"] = folder / "plot.png"
        except ImportError:
            pass  # the tables are the result; the plot is a convenience
        return paths


def _markdown(columns: List[str], rows: List[Dict[str, Any]], formats: Dict[str, str]) -> str:
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c == "method" else "---:" for c in columns) + "|"]
    for row in rows:
        cells = ["-" if row.get(c) is None else formats.get(c, "{}").format(row[c])
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
