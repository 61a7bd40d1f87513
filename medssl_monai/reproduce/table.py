"""A paper's main table from its stages' outputs: ``table.md``, ``results.json`` and ``table.png``.

Every cell is an estimate with its 95% interval; a row may carry the paper's published number for the same cell
(with the paper's own interval where it gives one), and the random-init arm sits beside the SSL arm in the same
section, so the comparison the paper makes is one look.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Cell", "Row", "Section", "Table", "write_table", "seed_bootstrap_cell"]


@dataclass
class Cell:
    """One number with its 95% interval (``ci_low``/``ci_high``), optionally mean ± std over seeds.

    Attributes:
        estimate: the number.
        ci_low, ci_high: its 95% interval (``nan`` when it has none).
        std: standard deviation over seeds (TVRL reports mean ± std), or ``None``.
        n: how many samples (videos, frames, subjects) the interval is over.
        scale: multiplier for display (100 for percentages).
    """

    estimate: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    std: float | None = None
    n: int | None = None
    scale: float = 1.0

    def text(self, digits: int = 3) -> str:
        """``0.912 (0.88-0.94)``; with ``std``: ``0.912 ± 0.010 (0.88-0.94)``."""
        if self.estimate is None or not math.isfinite(self.estimate):
            return "n/a"
        e = self.estimate * self.scale
        head = f"{e:.{digits}f}"
        if self.std is not None:
            head += f" ± {self.std * self.scale:.{digits}f}"
        if math.isfinite(self.ci_low) and math.isfinite(self.ci_high):
            head += f" ({self.ci_low * self.scale:.{digits}f}-{self.ci_high * self.scale:.{digits}f})"
        return head

    @classmethod
    def from_ci(cls, d: Mapping[str, Any] | None, scale: float = 1.0, n: int | None = None) -> Cell:
        """From a ``{"estimate", "ci_low", "ci_high"}`` mapping (the evaluation reports' format)."""
        if not d:
            return cls(float("nan"))
        return cls(
            float(d.get("estimate", float("nan"))),
            float(d.get("ci_low", float("nan"))),
            float(d.get("ci_high", float("nan"))),
            n=n if n is not None else d.get("n"),
            scale=scale,
        )


@dataclass
class Row:
    """One arm of a section: its name, its cells by column, and the paper's published cells where known."""

    name: str
    cells: dict[str, Cell]
    published: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class Section:
    """A block of the table: the rows compared with each other (random init beside SSL)."""

    title: str
    columns: list[str]
    rows: list[Row]
    digits: int = 3
    better: str = ""  # e.g. "higher is better"


@dataclass
class Table:
    """A paper's main table."""

    paper: str
    title: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The table as markdown."""
        lines = [f"# {self.title}", ""]
        for sec in self.sections:
            lines += [f"## {sec.title}" + (f" ({sec.better})" if sec.better else ""), ""]
            has_pub = any(r.published for r in sec.rows)
            head = ["arm", *sec.columns]
            if has_pub:
                head.append("published (paper)")
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + " --- |" * len(head))
            for r in sec.rows:
                cells = [r.name + (f" ({r.note})" if r.note else "")]
                cells += [r.cells[c].text(sec.digits) if c in r.cells else "n/a" for c in sec.columns]
                if has_pub:
                    cells.append("; ".join(f"{k}: {v}" for k, v in r.published.items()) or "-")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """JSON data of the table (every cell with its interval)."""
        return {
            "paper": self.paper,
            "title": self.title,
            "sections": [asdict(s) for s in self.sections],
            "notes": self.notes,
        }

    def plot(self, path: Path) -> Path:
        """``table.png``: one panel per section and column, each arm's estimate with its 95% interval."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [(s, c) for s in self.sections for c in s.columns]
        cols = min(3, max(1, len(panels)))
        nrows = math.ceil(len(panels) / cols)
        height = max(2.0, 0.45 * max((len(s.rows) for s in self.sections), default=1) + 1.2)
        fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, height * nrows), squeeze=False)
        for ax in axes.flat[len(panels) :]:
            ax.axis("off")
        for ax, (sec, col) in zip(axes.flat, panels):
            names = [r.name for r in sec.rows]
            for y, r in enumerate(sec.rows):
                c = r.cells.get(col)
                if c is None or not math.isfinite(c.estimate):
                    continue
                e = c.estimate * c.scale
                if math.isfinite(c.ci_low) and math.isfinite(c.ci_high):
                    ax.errorbar(
                        e, y, xerr=[[e - c.ci_low * c.scale], [c.ci_high * c.scale - e]], fmt="o", color="C0", capsize=3
                    )
                else:
                    ax.plot(e, y, "o", color="C0")
                pub = r.published.get(col)
                value = _published_value(pub)
                if value is not None:
                    ax.plot(value, y, "D", color="C3", label="published" if y == 0 else None)
            ax.set_yticks(range(len(names)), names)
            ax.invert_yaxis()
            ax.set_title(f"{sec.title}\n{col}", fontsize=8)
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(f"{self.title} (dots: estimate with 95% interval; red diamonds: published)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _published_value(text: str | None) -> float | None:
    """The leading number of a published cell (``"93.32 (93.21-93.43)"`` -> 93.32)."""
    if not text:
        return None
    try:
        return float(text.split()[0])
    except ValueError:
        return None


def write_table(table: Table, out: Path) -> dict[str, Path]:
    """Write ``table.md``, ``results.json`` and ``table.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "table.md", out / "results.json", out / "table.png"
    md.write_text(table.markdown())
    js.write_text(json.dumps(table.as_dict(), indent=2, allow_nan=True) + "\n")
    table.plot(png)
    return {"table.md": md, "results.json": js, "table.png": png}


def seed_bootstrap_cell(
    metric: str, truth: Sequence[float], preds: Sequence[Sequence[float]], n_resamples: int, seed: int = 0
) -> Cell:
    """Mean ± std over seeds of a test metric, with a 95% bootstrap interval of the seed-mean over test samples.

    Args:
        metric: ``mae`` (regression) or ``auroc`` (classification: ``preds`` are P(positive)).
        truth: the test labels, N.
        preds: one prediction vector (N) per seed, in the order of ``truth``.
        n_resamples: bootstrap resamples (the same test samples drawn for every seed: a paired bootstrap).
        seed: the bootstrap's seed.
    """
    import numpy as np

    from medssl_monai.evaluation.bootstrap import bootstrap_ci

    y = np.asarray(truth, dtype=np.float64)
    p = np.asarray(preds, dtype=np.float64).T  # N x S

    def per_seed(t: np.ndarray, q: np.ndarray) -> np.ndarray:
        if metric == "mae":
            return np.abs(q - t[:, None]).mean(0)
        from sklearn.metrics import roc_auc_score

        if len(np.unique(t)) < 2:
            return np.full(q.shape[1], np.nan)
        return np.array([roc_auc_score(t, q[:, s]) for s in range(q.shape[1])])

    values = per_seed(y, p)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    try:
        ci = bootstrap_ci(
            lambda t, q: float(np.mean(per_seed(t, q))), y, p, n_resamples=n_resamples, seed=seed, vectorized=False
        )
        low, high = ci.ci
    except ValueError:  # e.g. a one-class test set: no AUROC at all
        low = high = float("nan")
    return Cell(float(np.mean(values)), low, high, std=std, n=len(y))
