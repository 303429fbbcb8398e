"""What the command-line tools on a trained run share: `--workdir` and `--step`, and errors of
the user's making printed as one line (`error: ...`) instead of a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags

from train import metrics
from train.validation import ConfigError

FLAGS = flags.FLAGS


def define_run_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The run directory (what main.py trained).')
  flags.DEFINE_string('step', 'latest', 'The checkpoint: latest, best, or a step number.')
  flags.mark_flags_as_required(['workdir'])


def no_arguments(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; every option is a --flag')


def run(main: Callable) -> None:
  """`app.run(main)`, with a ConfigError as one line."""
  def guarded(argv):
    metrics.quiet_library_logs()
    try:
      main(argv)
    except ConfigError as e:
      sys.exit(f'error: {e}')
  app.run(guarded)
