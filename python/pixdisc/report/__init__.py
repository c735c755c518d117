"""Everything pixdisc writes for people: experiment reports (``experiment``), the Section V figures
(``analysis``) and the paper reproduction (``reproduction``), all drawn through ``figure``; the modules that
compute the numbers render nothing themselves.

The paper's Table II and the accuracy intervals live in :mod:`pixdisc.paper` and :mod:`pixdisc.statistics`;
their names are exported here as well, where reports have always found them.
"""

from ..paper import PAPER_CITATION, PAPER_TABLE_II, paper_reference
from ..statistics import accuracy_interval, with_intervals
from .analysis import plot_fragmentation_cdf, plot_neighbourhood_scatter, plot_pixel_histogram, plot_robustness_curves
from .experiment import (
    SETTING_LABELS,
    accuracy_bars,
    breakdown_table,
    certify_table,
    check_verdict,
    draw_accuracy,
    draw_eps_curve,
    markdown_table,
    plot_accuracy,
    plot_eps_curve,
    quick_label,
    wall_time_text,
    write_json,
    write_markdown,
    write_report,
)
from .figure import png_figure

__all__ = [
    "PAPER_CITATION",
    "PAPER_TABLE_II",
    "SETTING_LABELS",
    "accuracy_bars",
    "accuracy_interval",
    "breakdown_table",
    "certify_table",
    "check_verdict",
    "draw_accuracy",
    "draw_eps_curve",
    "markdown_table",
    "paper_reference",
    "plot_accuracy",
    "plot_eps_curve",
    "plot_fragmentation_cdf",
    "plot_neighbourhood_scatter",
    "plot_pixel_histogram",
    "plot_robustness_curves",
    "png_figure",
    "quick_label",
    "wall_time_text",
    "with_intervals",
    "write_json",
    "write_markdown",
    "write_report",
]
