"""The multi-process runtime: start-up of JAX's distributed runtime, the device mesh the trainer
shards batches over, and SIGTERM handling that every process agrees on.

`initialize(config)` calls `jax.distributed.initialize()` when `config.distributed` is set or a
cluster scheduler launched several tasks (SLURM's SLURM_NTASKS > 1, Open MPI's
OMPI_COMM_WORLD_SIZE > 1). Without a scheduler, the environment names the job:
JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID.
On CPU the processes exchange data through gloo collectives. Inside a SLURM job, each task's
process must be started by `srun` (which names the job step JAX reads); `python main.py` run by
the batch script itself is refused with one line saying so (`ConfigError`).

`Distribution`: one mesh axis 'data' over every device of every process; batches are sharded on
their leading axis, parameters replicated. `Preemption`: SIGTERM, SIGINT and SIGHUP set a flag that
the training loop reads between steps; all processes stop together when any was asked to. main.py
blocks SIGTERM from its first line until `Preemption` handles it, so a SIGTERM during start-up (a
SLURM time limit's early signal, a sweep that stops) stops the run at its first step with a
checkpoint instead of killing it.
"""
from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train.validation import ConfigError


def _scheduled_tasks() -> int:
  for var in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if os.environ.get(var, '').isdigit():
      return int(os.environ[var])
  return 1


def _outside_srun() -> bool:
  """Inside a SLURM allocation but not in a job step that srun started (the batch script)."""
  return 'SLURM_JOB_ID' in os.environ and 'SLURM_STEP_NODELIST' not in os.environ


def initialize(config) -> None:
  """Starts JAX's distributed runtime when the job has several processes; must run before any
  JAX computation.

  Args:
    config: the run's config (`config.distributed` asks for the runtime in any case).
  Raises:
    ConfigError: a multi-process run that cannot find its job (e.g. a SLURM job's batch script
      that runs main.py itself instead of through srun).
  """
  if not (config.distributed or _scheduled_tasks() > 1 or 'JAX_NUM_PROCESSES' in os.environ):
    return
  kwargs = {}
  if 'JAX_NUM_PROCESSES' in os.environ:
    kwargs = dict(coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
                  num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                  process_id=int(os.environ['JAX_PROCESS_ID']))
  elif _outside_srun():
    tasks = os.environ.get('SLURM_NTASKS', '1')
    raise ConfigError(f'this SLURM job has {tasks} task(s) but main.py was not started by srun; '
                      'start one process per task with: srun python main.py --config=... '
                      '--workdir=... --config.distributed=True')
  # Only the CPU backend reads this; GPU and TPU runs use their own collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # no scheduler that JAX knows and no JAX_* variables
    raise ConfigError(f'config.distributed=True but no job to join ({e}); start the processes '
                      'with srun or mpirun, or set JAX_COORDINATOR_ADDRESS=host:port, '
                      'JAX_NUM_PROCESSES and JAX_PROCESS_ID for each') from None


class Distribution:
  def __init__(self):
    self.mesh = Mesh(np.asarray(jax.devices()), ('data',))
    self.batch = NamedSharding(self.mesh, P('data'))
    self.replicated = NamedSharding(self.mesh, P())
    self.num_devices = jax.device_count()

  def check_batch(self, global_batch: int, what: str) -> None:
    if global_batch % self.num_devices:
      raise ConfigError(f'{what}={global_batch} must divide by the number of devices '
                        f'({self.num_devices}); use a multiple of {self.num_devices}')

  def put_batch(self, batch: dict) -> dict:
    """Global numpy batch -> global jax arrays; each process contributes its own rows."""
    n, i = jax.process_count(), jax.process_index()

    def put(x):
      rows = x.shape[0] // n
      return jax.make_array_from_process_local_data(self.batch, x[i * rows:(i + 1) * rows],
                                                    x.shape)
    return jax.tree.map(put, batch)

  def carry_sharding(self, carry):
    return jax.tree.map(lambda _: self.batch, carry)

  def gather(self, x) -> np.ndarray:
    """A batch-sharded array, whole, on every process."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Preemption:
  """SIGTERM (preemption), SIGINT (Ctrl-C) and SIGHUP (a closed terminal) set a flag that the
  training loop reads between steps. A second SIGINT ends the process at once with one line
  and exit status 130, leaving the checkpoints as they are (the last complete one is kept)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
      # A SIGTERM that main.py held since start-up arrives now, at the handler.
      signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return self

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      os.write(2, b'error: interrupted again: stopped at once, without a checkpoint of this '
               b'step; the earlier checkpoints are kept (rerun the same command to resume)\n')
      os._exit(128 + signum)
    if not self.requested:
      logging.warning('%s received: saving a checkpoint and stopping (Ctrl-C again to stop at '
                      'once)', signal.Signals(signum).name)
    self.requested = True

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  def agreed(self) -> bool:
    """True when any process was asked to stop (all processes must save together)."""
    if jax.process_count() == 1:
      return self.requested
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))
