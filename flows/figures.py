"""Matplotlib figures for artifacts: drawn off-screen, returned as PNG bytes."""

from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot on the Agg backend: a worker has no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure) -> bytes:
    """The figure laid out and encoded as PNG; the figure is closed."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot().close(figure)
    return buffer.getvalue()
