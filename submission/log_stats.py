"""pass@k and maj@k of an attempt log, by problem and overall, as a table and a plot.

pass@k is the chance that at least one of k attempts drawn without replacement
from a problem's n is right, computed exactly (the unbiased estimator
1 - C(n-c, k) / C(n, k) of Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", with c right of n). maj@k is the chance that the plain
majority of k such attempts is the right answer, attempts without an answer
not voting and a tie counting 1/(answers tied) when the right one is among
them: exact for k = n, otherwise the mean over `MAJ_DRAWS` seeded draws.
Only problems with a known answer count.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import polars as pl

MAJ_DRAWS = 2000
OVERALL = "overall"


def pass_at_k(n: int, right: int, k: int) -> float:
    if n - right < k:
        return 1.0
    return 1.0 - math.comb(n - right, k) / math.comb(n, k)


def majority_credit(answers: Sequence[int | None], expected: int) -> float:
    """The plain majority's credit: 1 if right alone on top, 1/t if tied among t, else 0."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    leaders = [a for a, v in votes.items() if v == top]
    return 1.0 / len(leaders) if expected in leaders else 0.0


def maj_at_k(answers: Sequence[int | None], expected: int, k: int, rng: random.Random) -> float:
    if k >= len(answers):
        return majority_credit(answers, expected)
    draws = [majority_credit(rng.sample(answers, k), expected) for _ in range(MAJ_DRAWS)]
    return sum(draws) / MAJ_DRAWS


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ... below n, then n."""
    ks = [1 << i for i in range(max(0, n.bit_length())) if 1 << i < n]
    return [*ks, n] if n else []


def score_table(attempts: pl.DataFrame, expected: dict[str, int | None]) -> pl.DataFrame:
    """One row per graded problem and a last `overall` row (the mean over problems).

    Columns: problem_id, attempts, answered, right, then pass@k and maj@k for
    every k of `ks_for` the smallest attempt count of the graded problems.
    """
    grouped = attempts.group_by("problem_id", maintain_order=True).agg(pl.col("answer"))
    graded = [
        (pid, answers, expected[pid])
        for pid, answers in grouped.iter_rows()
        if expected.get(pid) is not None
    ]
    if not graded:
        return pl.DataFrame()
    ks = ks_for(min(len(answers) for _, answers, _ in graded))
    rows = []
    for pid, answers, answer in graded:
        right = sum(1 for a in answers if a == answer)
        rng = random.Random(f"maj@k/{pid}")
        row: dict[str, object] = {
            "problem_id": pid,
            "attempts": len(answers),
            "answered": sum(1 for a in answers if a is not None),
            "right": right,
        }
        row |= {f"pass@{k}": pass_at_k(len(answers), right, k) for k in ks}
        row |= {f"maj@{k}": maj_at_k(answers, answer, k, rng) for k in ks}
        rows.append(row)
    table = pl.DataFrame(rows)
    means = table.select(
        pl.lit(OVERALL).alias("problem_id"),
        *(pl.col(c).sum() for c in ("attempts", "answered", "right")),
        *(pl.col(c).mean() for c in table.columns[4:]),
    )
    return pl.concat([table, means], how="vertical_relaxed")


def render_markdown(table: pl.DataFrame, title: str) -> str:
    if table.is_empty():
        return f"# {title}\n\nNo problem with a known answer: nothing to grade.\n"
    columns = table.columns
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in table.iter_rows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pl.DataFrame, path: Path, title: str) -> None:
    """Overall pass@k and maj@k against k (log scale), one problem's curves faint behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not table.is_empty():
        ks = [int(c.split("@")[1]) for c in table.columns if c.startswith("pass@")]
        per_problem = table.filter(pl.col("problem_id") != OVERALL)
        for row in per_problem.iter_rows(named=True):
            ax.plot(ks, [row[f"maj@{k}"] for k in ks], color="tab:orange", alpha=0.12)
        overall = table.filter(pl.col("problem_id") == OVERALL).row(0, named=True)
        for metric, colour in (("pass", "tab:blue"), ("maj", "tab:orange")):
            values = [overall[f"{metric}@{k}"] for k in ks]
            ax.plot(ks, values, marker="o", color=colour, label=f"{metric}@k (overall)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(0, 1.02)
        ax.legend()
    ax.set_xlabel("k (attempts)")
    ax.set_ylabel("share of problems")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
