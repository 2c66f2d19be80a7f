"""depthlab/loop.py: how many steps each dispatch runs. (The whole loop, from train.py to a
finished run, is exercised by tests/test_train.py and tests/test_checkpoints.py.)"""

from configs import default
from depthlab import loop


def test_a_dispatch_runs_several_steps_except_where_a_log_eval_or_checkpoint_step_falls_inside():
  config = default.get_config()
  config.total_steps, config.log_every_steps, config.eval_every_steps = 100, 10, 50
  config.checkpoint_every_steps, config.steps_per_dispatch = 50, 5
  assert loop.dispatch_size(0, config) == 5  # steps 1-5
  assert loop.dispatch_size(5, config) == 5  # 6-10: the log step ends the dispatch
  assert loop.dispatch_size(7, config) == 1  # after a resume at step 7: one by one up to 10
  assert loop.dispatch_size(98, config) == 1  # 99, 100: the end
  config.steps_per_dispatch = 1
  assert loop.dispatch_size(0, config) == 1
