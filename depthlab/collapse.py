"""Finds a run whose net has stopped learning (its training loss and error at chance) and
says so: at_chance, CollapseWatch, the alarm's text and the errors.TrainingCollapsed error."""

import math

import ml_collections

from depthlab.naming import run_name
from depthlab.state import seeds

CHANCE_LOSS_MARGIN = 0.03  # a dead net's loss sits this close to ln(num_classes) ...
CHANCE_ERROR_MARGIN = 0.03  # ... and its error this close to 1 - 1/num_classes (it predicts one class)


def at_chance(loss: float, error: float, num_classes: int) -> bool:
  """True if a training loss and error are those of a net that has stopped learning:
  uniform (or constant) predictions give loss ln(num_classes) and error 1 - 1/num_classes."""
  return abs(loss - math.log(num_classes)) < CHANCE_LOSS_MARGIN and error > 1 - 1 / num_classes - CHANCE_ERROR_MARGIN


class CollapseWatch:
  """Finds a run whose net has stopped learning: training loss and error at chance
  (`at_chance`) in every log line for config.collapse_steps steps in a row, all after the
  warm-up.

  A net that blew up in its first steps and came back with dead units predicts one class
  for every image. A fresh net starts near chance too, and a deep plain net can stay there
  for a while before it learns, hence the wait after the warm-up and the long stretch.
  With several seeds each seed is watched on its own.
  """

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.steps_needed = config.collapse_steps
    self.log_every_steps = config.log_every_steps
    self.watch_from = config.warmup_steps + config.log_every_steps  # first window fully after warm-up
    self.num_classes = num_classes
    self.prefixes = [""] if config.num_seeds == 1 else [f"seed{s}/" for s in seeds(config)]
    self.at_chance_since = {p: None for p in self.prefixes}  # first step of the stretch at chance
    self.dead = set()

  def update(self, step: int, line: dict[str, float]) -> list[str]:
    """Counts this log line (the mean of the steps since the last one); returns the seeds ("" for
    a one-seed run) whose stretch at chance has just reached collapse_steps steps."""
    if step < self.watch_from:
      return []
    newly = []
    for p in self.prefixes:
      if not at_chance(line[f"{p}train_loss"], line[f"{p}train_error"], self.num_classes):
        self.at_chance_since[p] = None
        continue
      if self.at_chance_since[p] is None:
        self.at_chance_since[p] = step - self.log_every_steps + 1
      if step - self.at_chance_since[p] + 1 >= self.steps_needed and p not in self.dead:
        self.dead.add(p)
        newly.append(p)
    return newly

  def since(self, prefix: str) -> int:
    """The first step of the seed's stretch at chance."""
    return self.at_chance_since[prefix]

  def all_dead(self) -> bool:
    return len(self.dead) == len(self.prefixes)


def collapse_message(
  config: ml_collections.ConfigDict, who: list[str], first: int, step: int, line: dict[str, float], num_classes: int
) -> tuple[str, str]:
  """The alarm's title and text: what was seen, the likely cause and the fix."""
  name = run_name(config) + (f" ({', '.join(p.rstrip('/') for p in who)})" if who != [""] else "")
  p = who[0]
  title = f"{name} is at chance: its net has stopped learning"
  text = (
    f"Training loss {line[f'{p}train_loss']:.3f} (ln {num_classes} = {math.log(num_classes):.3f}) and error "
    f"{100 * line[f'{p}train_error']:.1f}% in every log line of steps {first}-{step}, after the warm-up. "
    "Likely cause: the first steps at the full learning rate blew the net up and left it predicting one "
    f"class. Fix: warm up longer (--config.warmup_steps, now {config.warmup_steps}) or lower "
    f"--config.learning_rate (now {config.learning_rate}); see docs/recipe.md."
  )
  return title, text
