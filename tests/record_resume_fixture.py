"""Records tests/fixtures/resume/: the checkpoint of step 2 of a tiny run (ResNet-8 on TFDS's
mock CIFAR-10, conftest.make_tiny_config), its config.json, and the metrics that the same run,
trained on without a stop, logged at step 4. tests/test_checkpoints.py resumes that checkpoint
with today's code and holds its step 4 to the recorded one: a checkpoint written by an older
version of the code restores, and its next steps are the ones it would have taken.

    python tests/record_resume_fixture.py

Recorded once, by the code of commit e4c0e6c (before the Trainer); run it again only when a
change means to break old checkpoints, and say so in its commit.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

import conftest  # noqa: E402  (sets the fake devices before JAX starts)

FIXTURE = os.path.join(REPO, "tests", "fixtures", "resume")


def main() -> None:
  config = conftest.make_tiny_config()
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 5
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "run")
    subprocess.run(conftest.train_py(config, workdir), cwd=REPO, env=conftest.process_env(1), check=True)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      step4 = [line for line in map(json.loads, f) if line["step"] == 4]
    shutil.rmtree(FIXTURE, ignore_errors=True)
    os.makedirs(FIXTURE)
    shutil.copy(os.path.join(workdir, "config.json"), FIXTURE)
    shutil.copytree(os.path.join(workdir, "checkpoints", "2"), os.path.join(FIXTURE, "checkpoints", "2"))
    with open(os.path.join(FIXTURE, "step4_metrics.json"), "w") as f:
      json.dump(step4[-1], f, indent=2)


if __name__ == "__main__":
  main()
