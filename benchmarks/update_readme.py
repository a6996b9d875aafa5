"""Paste generated benchmark tables into README.md, so the numbers there are regenerated, not typed.

For every file ``benchmarks/results/NAME.md``, the text between the markers

    <!-- NAME:start -->
    <!-- NAME:end -->

in README.md is replaced by that file's contents (``bench_select.md`` goes between the
``bench_select`` markers, ``bench_hf.md`` between the ``bench_hf`` markers, and so on). Text
outside the markers is never touched. A results file whose markers are missing from README.md is
an error: add the two marker lines where its table should appear.

    python benchmarks/update_readme.py                  # every results/*.md
    python benchmarks/update_readme.py bench_select     # just this one
    python benchmarks/update_readme.py --check          # exit 1 if README.md is out of date
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


class MarkerError(Exception):
    """README.md lacks a marker pair, or has it more than once or out of order."""


def markers(name):
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(text, name, content):
    """``text`` with the part between NAME's markers replaced by ``content``."""
    start, end = markers(name)
    starts, ends = text.count(start), text.count(end)
    if starts == 0 and ends == 0:
        raise MarkerError(
            f"README has no {start} ... {end} markers: add these two lines where the "
            f"{name} table should appear")
    if starts != 1 or ends != 1:
        raise MarkerError(f"README must hold {start} and {end} exactly once each "
                          f"(found {starts} and {ends})")
    head, rest = text.split(start)
    if end not in rest:
        raise MarkerError(f"README has {end} before {start}")
    _, tail = rest.split(end)
    return f"{head}{start}\n{content.strip()}\n{end}{tail}"


def update(readme_text, results_dir, names=None):
    """Return ``(new_text, updated_names, errors)``.

    ``names`` None means every ``*.md`` in ``results_dir``. A named table without results, or
    whose markers are missing, is reported in ``errors``; the others are still pasted.
    """
    errors = []
    if names is None:
        names = sorted(p.stem for p in results_dir.glob("*.md"))
        if not names:
            errors.append(f"no tables to paste: {results_dir} holds no *.md files (run the "
                          "benchmark first)")
    text, updated = readme_text, []
    for name in names:
        table = results_dir / f"{name}.md"
        if not table.is_file():
            errors.append(f"{table} does not exist (run the benchmark that writes it first)")
            continue
        try:
            text = replace_section(text, name, table.read_text())
        except MarkerError as exc:
            errors.append(str(exc))
            continue
        updated.append(name)
    return text, updated, errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*",
                        help="tables to paste (default: every benchmarks/results/*.md)")
    parser.add_argument("--readme", type=Path, default=README, help=f"default: {README}")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help=f"default: {RESULTS_DIR}")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the README differs from the tables")
    opts = parser.parse_args(argv)

    if not opts.readme.is_file():
        print(f"error: {opts.readme} does not exist", file=sys.stderr)
        return 1
    old = opts.readme.read_text()
    new, updated, errors = update(old, opts.results, opts.names or None)
    for error in errors:
        print(f"error: {opts.readme.name}: {error}", file=sys.stderr)
    if opts.check:
        if new != old:
            print(f"{opts.readme} is out of date for: {', '.join(updated)} "
                  "(run benchmarks/update_readme.py)", file=sys.stderr)
            return 1
        return 1 if errors else 0
    if new != old:
        opts.readme.write_text(new)
    for name in updated:
        print(f"{opts.readme}: pasted benchmarks/results/{name}.md between its markers"
              + ("" if new != old else " (already up to date)"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
