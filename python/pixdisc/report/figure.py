"""One way to make a figure file: matplotlib's Agg backend, written atomically as PNG (every figure pixdisc draws)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Tuple

from .._files import PathLike, atomic_write

__all__ = ["png_figure", "pyplot"]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only: no display needed on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def png_figure(path: PathLike, size: Tuple[float, float], title: Optional[str] = None,
               projection: Optional[str] = None, tight_layout: bool = True) -> Iterator[Tuple[Any, Any]]:
    """Yields ``(figure, axes)``; when the block succeeds, sets the title and writes ``path``.

    The figure is closed either way, so a failed plot leaks neither memory
    nor a half-written file.
    """
    plt = pyplot()
    figure = plt.figure(figsize=size)
    try:
        axes = figure.add_subplot(projection=projection)
        yield figure, axes
        if title:
            axes.set_title(title)
        if tight_layout:
            figure.tight_layout()
        with atomic_write(path) as stream:
            figure.savefig(stream, dpi=110, format="png")
    finally:
        plt.close(figure)
