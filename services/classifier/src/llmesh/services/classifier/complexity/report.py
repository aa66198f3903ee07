"""The training report: markdown with the cross-validated routing metrics and a PNG of routed
accuracy against the share of strong-model calls, beside the random and length baselines."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np
from llmesh.services.classifier.complexity.evaluation import RoutingMetrics, routing_curve


@dataclass(frozen=True)
class Scored:
    name: str
    scores: np.ndarray


def plot_routing_curves(
    path: pathlib.Path,
    scored: list[Scored],
    weak_correct: np.ndarray,
    strong_correct: np.ndarray,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    weak_acc, strong_acc = float(np.mean(weak_correct)), float(np.mean(strong_correct))
    for item in scored:
        curve = routing_curve(item.scores, weak_correct, strong_correct)
        ax.plot(curve.strong_share * 100, curve.accuracy * 100, label=f"{item.name} (APGR {curve.apgr():.3f})", lw=1.8)
    ax.plot([0, 100], [weak_acc * 100, strong_acc * 100], ls="--", color="grey", label="random (APGR 0.500)")
    ax.axhline(strong_acc * 100, color="black", lw=0.8, ls=":")
    ax.axhline(weak_acc * 100, color="black", lw=0.8, ls=":")
    ax.axhline(
        (weak_acc + 0.95 * (strong_acc - weak_acc)) * 100, color="tab:red", lw=0.8, ls=":", label="95% of the gap"
    )
    ax.set_xlabel("strong-model calls (%)")
    ax.set_ylabel("accuracy of routed answers (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def metrics_row(name: str, m: RoutingMetrics) -> str:
    """n/a where the strong model is no better than the weak one on these prompts."""
    return (
        f"| {name} | {m.n} | **{_fmt(m.apgr, '.3f')}** | {_fmt(m.share_for_50_pgr, '.1%')} | "
        f"{_fmt(m.share_for_80_pgr, '.1%')} | {_fmt(m.share_for_95_pgr, '.1%')} | "
        f"{_fmt(m.cost_saved_at_95_pgr, '.1%')} | {_fmt(m.share_for_95_strong_accuracy, '.1%')} | "
        f"{_fmt(m.cost_saved_at_95_strong_accuracy, '.1%')} |"
    )


METRICS_HEADER = (
    "| router | prompts | APGR | strong calls for 50% of the gap | for 80% | for 95% | cost saved at 95% of the gap "
    "| strong calls for 95% of strong-only accuracy | cost saved there |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)
