"""Why a stack does not learn: per-layer gradient norms over the first steps, and its start.

  python -m train.diagnose --config=configs/study_ptb_plain8.py --steps=50 \
      --out=results/study_ptb_plain8/diagnosis.json [--config.model.residual=True ...]

Trains the config's model for `--steps` steps exactly as the trainer does (its optimizer,
schedule, clipping and data order) and records, at step 0 and every step after: the loss, the
global gradient norm, the norm of the gradient of each top-level parameter group of the stack
(one per layer, `lstm/<layer>`, and the embedding and output layers), and at step 0 the standard
deviation of every intermediate output the model computes (each layer's output: how much of the
input's signal reaches the top at the initial values). Writes one JSON file; prints a summary.
"""
from __future__ import annotations

import json
import math
import sys

import jax
import jax.numpy as jnp
import optax

from train import files, trainer


def _group(path) -> str:
  keys = [str(getattr(k, 'key', k)) for k in path]
  return '/'.join(keys[:2]) if keys and keys[0] == 'lstm' else keys[0]


def group_norms(grads) -> dict[str, float]:
  """{parameter group: L2 norm of its gradient}; a group is a stack layer or a top module."""
  sums: dict[str, float] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = _group(path)
    sums[name] = sums.get(name, 0.0) + float(jnp.sum(jnp.square(leaf)))
  return {k: math.sqrt(v) for k, v in sums.items()}


def activation_stds(s: trainer.Setup, params, batch) -> dict[str, float]:
  """Standard deviation of each intermediate output at these parameters (one batch)."""
  _, state = s.model.apply({'params': params}, **s.objective.model_inputs(batch),
                           capture_intermediates=True, mutable=['intermediates'])
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]:
    if hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim >= 2:
      out['/'.join(str(getattr(k, 'key', k)) for k in path)] = float(jnp.std(leaf))
  return out


def diagnose(config, steps: int) -> dict:
  """The record described in the module docstring."""
  s = trainer.setup(config)
  state, _ = trainer.initial_state(s)
  batches = s.train_batches.epoch_batches()
  first = next(batches)
  record = {'activation_std_at_init': activation_stds(s, state.params, first), 'steps': []}

  @jax.jit
  def step(state, batch):
    def loss_fn(params):
      rng = jax.random.fold_in(state.rng, state.step)
      outputs, carry = s.objective.apply(s.model, params, batch, state.carry or None, rng, True)
      sums = s.objective.loss_sums(outputs, batch)
      return sums['loss'] / sums['count'], carry
    (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, carry=jax.lax.stop_gradient(carry)
                         if s.objective.stream else ()), loss, grads

  batch = first
  for i in range(steps + 1):
    state, loss, grads = step(state, jax.tree.map(jnp.asarray, batch))
    norms = group_norms(grads)
    record['steps'].append({'step': i, 'loss': float(loss),
                            'bpc': float(loss) / math.log(2),
                            'grad_norm': math.sqrt(sum(v * v for v in norms.values())),
                            'group_grad_norms': norms})
    batch = next(batches)
  return record


def main(argv):
  from absl import flags
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f'error: unexpected arguments {argv[1:]}')
  record = diagnose(FLAGS.config, FLAGS.steps)
  record['config'] = json.loads(FLAGS.config.to_json())
  files.write_json(FLAGS.out, record)
  groups = list(record['steps'][0]['group_grad_norms'])
  print('step  bpc    ' + ' '.join(f'{g.split("/")[-1][:9]:>9}' for g in groups))
  for r in record['steps'][::max(1, len(record['steps']) // 10)]:
    print(f'{r["step"]:>4} {r["bpc"]:.3f} ' + ' '.join(
        f'{r["group_grad_norms"][g]:9.2e}' for g in groups))
  print('activation std at init:')
  for k, v in record['activation_std_at_init'].items():
    print(f'  {k}: {v:.3e}')
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
  flags.DEFINE_integer('steps', 50, 'Training steps to record.')
  flags.DEFINE_string('out', None, 'Where the JSON record goes.')
  flags.mark_flags_as_required(['config', 'out'])
  from train import cli
  app.run(main, flags_parser=cli.parse_flags)
  sys.exit(0)
