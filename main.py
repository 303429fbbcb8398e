"""Entry point: `python main.py --config=configs/stack.py --workdir=DIR [--config.FIELD=VALUE ...]`.

Flag and config errors and faults of the run end it with one line on stderr (`train.cli.run`).
"""
import jax
from absl import app, flags, logging
from ml_collections import config_flags

import train
from lstm import memory
from train import cli, distributed

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
  logging.info('JAX process %d of %d; devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
