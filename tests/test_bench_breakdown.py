"""bench/bench_breakdown.py on tiny shapes: its parts count every FLOP of the step once and run
on the CPU kernel (no timing is asserted)."""
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from lstm import native

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))
import bench_breakdown  # noqa: E402
import bench_lstm  # noqa: E402


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('layers', [1, 2, 3])
def test_the_parts_count_the_steps_flops_once(layers, train):
  case = dict(name='c', layers=layers, steps=8, train=train)
  flops = bench_breakdown.part_flops(case)
  assert sum(flops.values()) == bench_lstm.case_flops(case)
  assert set(flops) <= set(bench_breakdown.PARTS)


@pytest.mark.skipif(not native.available(), reason='times the CPU kernel, which needs a compiler')
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_every_part_runs_on_the_steps_shapes(dtype):
  case = dict(name='c', layers=2, steps=4, train=True, hidden=16, batch=4)
  x, y = bench_lstm.make_data(4, 4)
  step = bench_lstm.build_project(case, x, y, dtype=None if dtype == jnp.float32 else dtype)
  runners = bench_breakdown.part_runners(case, x, y, step, dtype)
  assert set(runners) == set(bench_breakdown.PARTS)
  for runner in runners.values():
    jax.block_until_ready(runner.run(2))
  step.run(1)  # the step's own parameters are still its own
  matmuls = bench_breakdown.matmul_runners(case, dtype)
  assert len(matmuls) == 4 and len({flops for _, flops in matmuls.values()}) == 1
  for runner, _ in matmuls.values():
    jax.block_until_ready(runner.run(1))
