"""Start-up of JAX's distributed runtime for multi-process runs.

`initialize(config)` calls `jax.distributed.initialize()` when `config.distributed` is set or a
cluster scheduler launched several tasks (SLURM's SLURM_NTASKS > 1, Open MPI's
OMPI_COMM_WORLD_SIZE > 1). Without a scheduler, the environment names the job:
JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID.
On CPU the processes exchange data through gloo collectives.
"""
from __future__ import annotations

import os

import jax


def _scheduled_tasks() -> int:
  for var in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if os.environ.get(var, '').isdigit():
      return int(os.environ[var])
  return 1


def initialize(config) -> None:
  """Must run before any JAX computation."""
  if not (config.get('distributed') or _scheduled_tasks() > 1 or 'JAX_NUM_PROCESSES' in os.environ):
    return
  kwargs = {}
  if 'JAX_NUM_PROCESSES' in os.environ:
    kwargs = dict(coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
                  num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                  process_id=int(os.environ['JAX_PROCESS_ID']))
  # Only the CPU backend reads this; GPU and TPU runs use their own collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
