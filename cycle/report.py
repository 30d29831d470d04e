"""The cycle's last lines: each round's submission CSV, its validation verdict, its local test score and its rank
on the round's leaderboard (every run and the submitted ensemble, ranked by test score where scored, else by
validation score). The last line is the last round's: the cycle's submission."""
from __future__ import annotations

from cycle.steps import Cycle, Round
from engine.summary import read_summary


def leaderboard_rank(rnd: Round) -> tuple[int | None, int, str]:
    """``(rank, rows ranked, by what)`` of the submitted ensemble among the round's runs and ensembles."""
    from leaderboard.table import load_runs

    df = load_runs(rnd.plan.runs_dir, task=rnd.plan.task, on_warning=None)
    ranked = df[df["rank"].notna()]
    by = "test score" if df["test_score"].notna().any() else "validation score"
    mine = df[df["run_dir"] == str(rnd.final_dir)]
    rank = int(mine["rank"].iloc[0]) if len(mine) and mine["rank"].notna().iloc[0] else None
    return rank, len(ranked), by


def final_line(rnd: Round, head: str = "submission") -> str:
    """``submission: <csv>: valid (N images); test <metric> 0.79 (public .., private ..); rank 1 of 7 ...``."""
    summary = read_summary(rnd.final_dir)
    sub = summary.get("submission") or {}
    parts = [f"{head}: {rnd.plan.submission_csv}: "
             + (f"valid ({sub.get('images')} images, checked against {sub.get('checked_against')})"
                if sub.get("valid") else "not validated")]
    test = summary.get("test") or {}
    if test.get("score") is not None:
        parts.append(f"test {summary.get('metric') or 'score'} {test['score']:.4f} (public {test.get('public', float('nan')):.4f}, "
                     f"private {test.get('private', float('nan')):.4f})")
    else:
        parts.append("no local test score (the plan has no test_gt)")
    rank, rows, by = leaderboard_rank(rnd)
    if rank is not None:
        parts.append(f"rank {rank} of {rows} on the {'round' if rnd.number else 'cycle'}'s leaderboard by {by} "
                     f"(python tools/leaderboard.py {rnd.plan.runs_dir})")
    return "; ".join(parts)


def final_lines(cycle: Cycle) -> list[str]:
    """One line per round before the last (``round 0: ...``), then the cycle's submission line (its last
    round's)."""
    *earlier, last = cycle.rounds
    return [final_line(rnd, f"round {rnd.number}") for rnd in earlier] + [final_line(last)]
