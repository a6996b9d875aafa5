"""The matplotlib ``Figure`` the package returns (:meth:`greedyprune.evaluate.Report.plot`):
built without pyplot, so that the user's backend and pyplot's figures are left alone, and shown
inline by Jupyter all the same.

IPython's inline backend renders only the figures pyplot manages; a figure made without pyplot
would show as its text, ``<Figure size ... with 1 Axes>``. This one renders itself as a PNG
when it is a cell's value (with pyplot's inline backend active, IPython's own formatter renders
it instead: one picture either way). Needs matplotlib, imported here.
"""
from __future__ import annotations

import io

from matplotlib.figure import Figure


class InlineFigure(Figure):
    """A :class:`matplotlib.figure.Figure` that Jupyter shows inline without pyplot."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png")
        return buffer.getvalue()
