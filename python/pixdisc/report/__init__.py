"""Everything pixdisc writes for people: experiment reports (``experiment``) and the paper reproduction
(``reproduction``); the modules that compute the numbers render nothing themselves."""

from .experiment import (
    PAPER_CITATION,
    PAPER_TABLE_II,
    SETTING_LABELS,
    accuracy_interval,
    certify_table,
    markdown_table,
    paper_reference,
    plot_accuracy,
    plot_eps_curve,
    quick_label,
    with_intervals,
    write_json,
    write_markdown,
    write_report,
)

__all__ = [
    "PAPER_CITATION",
    "PAPER_TABLE_II",
    "SETTING_LABELS",
    "accuracy_interval",
    "certify_table",
    "markdown_table",
    "paper_reference",
    "plot_accuracy",
    "plot_eps_curve",
    "quick_label",
    "with_intervals",
    "write_json",
    "write_markdown",
    "write_report",
]
