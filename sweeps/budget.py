"""``--n-trials N``: how many trials one sweep command runs, shared by all its local worker processes.

N counts the trials this command starts that end in its workers: COMPLETE, PRUNED, or FAIL with the trial's
error recorded (as ``study.optimize(n_trials=N)`` counts them; a trial that fails every time cannot make a
sweep run forever). A trial lost with its worker (the process killed, out of memory) has no end in a worker
and does not count: a surviving worker runs another in its place, so the command still ends with N ended
trials. N counts trials added by this command, not the study's total: rerunning ``--n-trials 30`` on an
existing study adds 30 (``run_cap`` in the sweep file caps the total).

The parent of ``--workers K`` keeps one ``Budget``; each worker asks it, through a pipe (``PipeGate``), before it
starts a trial. A worker is let start only while ``ended + running < N``; one asking while the last trials run
elsewhere waits for them, and starts in place of one whose worker died. One worker uses a ``LocalGate``.
Standard library only.
"""
from __future__ import annotations

import multiprocessing.connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Callable, Protocol


class Budget:
    """The ledger of one command: trials ended, workers holding a start, workers waiting for one."""

    def __init__(self, n_trials: int | None) -> None:
        self.n_trials = n_trials  # None: no limit (a --timeout or the sweep file ends the sweep)
        self.ended = 0
        self.running: set[int] = set()
        self.waiting: list[int] = []

    @property
    def spent(self) -> bool:
        return self.n_trials is not None and self.ended >= self.n_trials

    def end(self, worker: int) -> None:
        """``worker``'s trial ended (complete, pruned or failed with its error)."""
        if worker in self.running:
            self.running.discard(worker)
            self.ended += 1

    def ask(self, worker: int) -> None:
        self.waiting.append(worker)

    def drop(self, worker: int) -> None:
        """``worker`` is gone: a trial it was running is lost, not ended; it asks for nothing more."""
        self.running.discard(worker)
        if worker in self.waiting:
            self.waiting.remove(worker)

    def decide(self) -> list[tuple[int, bool]]:
        """Answers for the waiting workers that can have one now: True (start a trial) or False (stop)."""
        answers = []
        for worker in list(self.waiting):
            if self.spent:
                answers.append((worker, False))
            elif self.n_trials is None or self.ended + len(self.running) < self.n_trials:
                self.running.add(worker)
                answers.append((worker, True))
            else:
                continue  # the last trials run elsewhere: wait, in case one is lost
            self.waiting.remove(worker)
        return answers


class Gate(Protocol):
    def ask(self, ended: bool) -> bool:
        """``ended``: this worker's previous trial ended. True: start another trial; False: stop."""

    def leave(self, ended: bool) -> None:
        """This worker stops on its own (timeout, run_cap, target, grid done)."""


class LocalGate:
    """One worker: the budget in the same process."""

    def __init__(self, n_trials: int | None) -> None:
        self.budget = Budget(n_trials)

    def ask(self, ended: bool) -> bool:
        if ended:
            self.budget.end(0)
        self.budget.ask(0)
        ((_, go),) = self.budget.decide()
        return go

    def leave(self, ended: bool) -> None:
        if ended:
            self.budget.end(0)


class PipeGate:
    """A worker of ``--workers K``: asks the parent's budget through ``conn`` (messages: ``(ended, more)``)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def ask(self, ended: bool) -> bool:
        self.conn.send((ended, True))
        return bool(self.conn.recv())

    def leave(self, ended: bool) -> None:
        self.conn.send((ended, False))


def serve(procs: list[BaseProcess], conns: list[Connection], budget: Budget,
          on_exit: Callable[[BaseProcess], None]) -> None:
    """Answer the workers' requests until every worker has exited; ``on_exit(proc)`` after each exit."""
    live = dict(enumerate(procs))
    while live:
        handles = [conns[i] for i in live] + [p.sentinel for p in live.values()]
        ready = multiprocessing.connection.wait(handles)
        for i, proc in list(live.items()):
            if conns[i] in ready:
                try:
                    ended, more = conns[i].recv()
                except EOFError:  # the worker is gone; its sentinel says so too
                    pass
                else:
                    if ended:
                        budget.end(i)
                    if more:
                        budget.ask(i)
            if proc.sentinel in ready:
                proc.join()
                budget.drop(i)
                del live[i]
                on_exit(proc)
        for i, go in budget.decide():
            try:
                conns[i].send(go)
            except (BrokenPipeError, ConnectionResetError):  # died meanwhile: its sentinel drops it next
                pass
