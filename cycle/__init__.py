"""The competition cycle as one resumable plan (``python tools/cycle.py configs/cycles/<plan>.yaml``).

A plan (:mod:`cycle.plan`) names a task, its data, the model configs (or the top-k trials of a finished
sweep), the folds, whether to add all-data models, TTA, selection, fitting, pseudo-label rounds and the
submission. :mod:`cycle.steps` turns it into steps, each with the folder it writes and the steps it needs;
:mod:`cycle.schedule` runs them in order, each under the claim of its folder (:mod:`tasks.formats.run_lock`),
so that several worker processes or machines on one shared folder each take the next free step, and a step
is done when its folder says so (summary.json, a cache, a fit), so a run interrupted anywhere continues.
:mod:`cycle.estimate` gives each step a time from measured rates; :mod:`cycle.workers` starts local workers.
"""
