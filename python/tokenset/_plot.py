"""The recall-vs-candidates plot of an index evaluation (matplotlib, the [plot] extra)."""
from __future__ import annotations

from typing import Any, Dict


def write_recall_plot(report: Dict[str, Any], path: str, title: str) -> None:
    """A PNG of recall@k against the number of FDE candidates from :meth:`tokenset.Index.evaluate`'s report.
    Raises ImportError with the install command when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('the plot needs matplotlib: pip install "tokenset[plot]"') from None
    xs = [r["candidates"] for r in report["results"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, [r["recall"] for r in report["results"]], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("FDE candidates reranked")
    ax.set_ylabel(f"recall@{report['k']} of exact MaxSim")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
