"""Entry point: `python main.py --config=configs/stack.py --workdir=DIR [--config.FIELD=VALUE ...]`.

Flag and config errors and faults of the run end it with one line on stderr (`train.cli.run`).
A SIGTERM at any time, start-up included, saves a checkpoint and exits 0 with results.json status
`preempted` (see train/distributed.py). In a run of several processes only process 0 logs its
progress to the console; the others print warnings and errors only.
"""
import signal

# First, before the imports (seconds): a SIGTERM now waits for the training loop to take it.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import train  # noqa: E402
from lstm import memory  # noqa: E402
from train import cli, distributed  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  config = FLAGS.config
  if config.keep_freed_memory:  # before JAX starts its threads (lstm.memory)
    memory.keep_freed_memory()
  distributed.initialize(config)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX process %d of %d; devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
