"""Run a cycle's steps: each worker (a process here, on another GPU, or on another machine sharing the folder)
takes the first step that is not done, whose steps before it are done, and whose folder it can claim
(:func:`tasks.formats.run_lock.try_claim`); it re-reads ``done()`` under the claim (another worker may have
finished it), runs it, and starts over. A worker with nothing to take waits for the others, saying for
which step and who holds it; a worker that dies releases its claims with its process, and the next worker
to come by takes its step over (a training resumes from its ``last.pt``). Every step thus runs once, and
a cycle stopped anywhere continues where it stopped.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from cycle.estimate import format_seconds
from cycle.steps import Cycle, Step
from tasks.formats.run_lock import RunClaim, read_owner, try_claim

POLL_S = 2.0


class Progress:
    """Which steps are done (remembered once seen: a done step stays done) and the time left."""

    def __init__(self, cycle: Cycle, workers: int = 1) -> None:
        self.cycle = cycle
        self.workers = max(1, workers)
        self._done: set[str] = set()

    def done(self, step: Step) -> bool:
        if step.key not in self._done and step.done():
            self._done.add(step.key)
        return step.key in self._done

    def forget(self, step: Step) -> None:
        self._done.discard(step.key)

    def ready(self, step: Step) -> bool:
        return all(self.done(self.cycle.step(key)) for key in step.after)

    def pending(self) -> list[Step]:
        return [s for s in self.cycle.steps if not self.done(s)]

    def eta(self) -> str:
        """The estimated time left for the pending steps shared by ``workers`` (``≥`` where some are unknown)."""
        estimates = [s.estimate() for s in self.pending()]
        known = sum(e for e in estimates if e is not None) / self.workers
        unknown = sum(e is None for e in estimates)
        if not estimates:
            return "0s"
        if unknown == len(estimates):
            return "?"
        return ("≥ " if unknown else "") + format_seconds(known)


def run_cycle(cycle: Cycle, out: Callable[[str], None] = print, worker: str = "", workers: int = 1,
              poll_s: float = POLL_S) -> int:
    """Run every step this worker can take until all are done; returns how many steps it ran."""
    progress = Progress(cycle, workers)
    prefix = f"w{worker.split('/')[0]}: " if worker else ""
    total = len(cycle.steps)
    ran, waiting = 0, ""
    while True:
        pending = progress.pending()
        if not pending:
            return ran
        taken = _take(pending, progress)
        if taken is None:
            line = _waiting_line(pending, progress)
            if line != waiting:
                out(f"{prefix}{line}")
                waiting = line
            time.sleep(poll_s)
            continue
        waiting = ""
        step, hold = taken
        with hold:
            progress.forget(step)
            if progress.done(step):
                continue
            number = total - len(pending) + 1
            out(f"{prefix}[{number}/{total}] {step.key}: started (cycle ETA {progress.eta()})")
            start = time.perf_counter()
            step.run(lambda message, k=step.key: out("\n".join(f"{prefix}    {k}: {line}" for line in message.splitlines())))
            ran += 1
            out(f"{prefix}[{number}/{total}] {step.key}: done in {format_seconds(time.perf_counter() - start)}")


def _take(pending: list[Step], progress: Progress) -> tuple[Step, RunClaim] | None:
    """The first ready step whose folder this worker can claim, with the claim."""
    for step in pending:
        if not progress.ready(step):
            continue
        hold = try_claim(step.folder)
        if hold is not None:
            return step, hold
    return None


def _waiting_line(pending: list[Step], progress: Progress) -> str:
    held = [(s, read_owner(s.folder)) for s in pending if progress.ready(s)]
    if not held:
        return "waiting: nothing ready"
    step, owner = held[0]
    who = f"pid {owner.pid} on {owner.host}" if owner else "another worker"
    more = f" (and {len(held) - 1} more)" if len(held) > 1 else ""
    return f"waiting: {step.key} is being run by {who}{more}"


def describe(cycle: Cycle, workers: int = 1) -> list[str]:
    """The plan's steps for ``--dry-run``: state (done, running by whom, ready, waiting) and estimated time."""
    progress = Progress(cycle, workers)
    lines = []
    width = max(len(s.key) for s in cycle.steps)
    for number, step in enumerate(cycle.steps, 1):
        if progress.done(step):
            state = "done"
        else:
            owner = read_owner(step.folder)
            waits = [k for k in step.after if not progress.done(cycle.step(k))]
            state = (f"running: pid {owner.pid} on {owner.host} since {owner.since}" if owner else
                     "to do" if not waits else f"to do, after {waits[0]}"
                     + (f" (+{len(waits) - 1} more)" if len(waits) > 1 else ""))
        estimate = "" if state == "done" else format_seconds(step.estimate())
        lines.append(f"{number:>3}. {step.key:<{width}}  {estimate:>7}  {state}")
    done = sum(progress.done(s) for s in cycle.steps)
    lines.append(f"{done} of {len(cycle.steps)} steps done; time left {progress.eta()}"
                 + (f" over {workers} workers" if workers > 1 else "")
                 + " (from this cycle's measured rates; '?' where none is measured yet: pass --rates FILE)")
    return lines

