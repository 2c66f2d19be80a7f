"""depthlab's library: what train.py, eval.py, benchmarks/ and sweeps/ share.

The commands at the top level (train.py, eval.py) and in benchmarks/ only parse their
command line and call in here; each module has one job, said in its docstring.

Which module may import which: a module imports only modules of a lower level, so the
dependencies run one way and no chain of imports inside depthlab/ is longer than 5 modules
(tests/test_package.py holds the code to this table).

  1  errors, naming, state, batches, parallel              nothing of depthlab
  2  cli, input_pipeline, run_files, collapse, steps,      level 1
     distributed
  3  evaluation, history, writers, workdir_lock,           levels 1-2
     validation, checkpoints
  4  trainer, actions, figures                             levels 1-3
  5  loop                                                  levels 1-4

So the loop imports the evaluation, never the reverse, and reading finished runs (run_files,
history, figures: `eval.py compare`) loads neither orbax nor the training loop.
"""
