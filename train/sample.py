"""Text from a trained language model (char, byte or word level).

  python -m train.sample --workdir=DIR [--step=best|latest|N] [--prompt=TEXT] [--length=N]
                         [--temperature=T] [--top_k=K] [--seed=S] [--num_samples=M]

The prompt goes through the model once, carrying the state; then each token is drawn from the
last logits and fed back with the carried state, by one compiled step function (traced once for
any length, temperature and seed). Without a prompt a sample starts after a line break ('\n' or
'<eos>'). `temperature=0` takes the most likely token; `top_k` keeps the k most likely. The same
seed gives the same text. A biLM samples from its forward model. The text goes to stdout, one
sample after another (a line '----' between them), and nothing is written to the workdir. A
reader that closes the pipe early (`| head`) ends it quietly; device memory that runs out (too
many samples at once) is one line.

Library use: `sample(run, prompt, length, ...)` returns the texts; `Sampler` draws token ids.
"""
from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from train import cli, faults
from train.run import Run, language_model, load_run
from train.validation import ConfigError


def draw(logits: jax.Array, key: jax.Array, temperature: jax.Array,
         top_k: Optional[int]) -> jax.Array:
  """One token per row of `logits` (rows, vocab): the argmax at temperature 0, else drawn from
  softmax(logits / temperature) over the `top_k` most likely (all when None)."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  drawn = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6), axis=-1)
  return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


class Sampler:
  """Draws tokens from `model` (a `models.LanguageModel`) with parameters `params`.

  `generate(prompt_ids, length, temperature, seed, num_samples)` -> (num_samples, length) ids.
  `traces` counts how often the per-token step was traced (once per Sampler); `tokens_per_s` is
  the last generation's speed after its first two tokens (which compile)."""

  def __init__(self, model, params, top_k: Optional[int] = None):
    if top_k is not None and not 0 < top_k:
      raise ConfigError(f'top_k={top_k} must be a positive number of tokens (or None: all)')
    self.model, self.params, self.top_k = model, params, top_k
    self.traces, self.tokens_per_s = 0, float('nan')
    self._start = jax.jit(self._start_fn)
    self._step = jax.jit(self._step_fn)

  def _logits(self, params, tokens, carry):
    return self.model.apply({'params': params}, tokens, initial_carry=carry)

  def _start_fn(self, params, prompt, key, temperature):
    logits, carry = self._logits(params, prompt, None)
    return draw(logits[:, -1], jax.random.fold_in(key, 0), temperature, self.top_k), carry

  def _step_fn(self, params, token, carry, key, index, temperature):
    self.traces += 1  # runs only while tracing
    logits, carry = self._logits(params, token[:, None], carry)
    return draw(logits[:, -1], jax.random.fold_in(key, index), temperature, self.top_k), carry

  def generate(self, prompt_ids, length: int, temperature: float = 1.0, seed: int = 0,
               num_samples: int = 1) -> np.ndarray:
    """`length` tokens after `prompt_ids` (at least one id) for each of `num_samples` rows."""
    if length < 1 or num_samples < 1:
      raise ConfigError(f'length={length} and num_samples={num_samples} must be positive')
    if not temperature >= 0:
      raise ConfigError(f'temperature={temperature} must be >= 0 (0: the most likely token)')
    prompt = jnp.tile(jnp.asarray(prompt_ids, jnp.int32)[None], (num_samples, 1))
    key, temp = jax.random.key(seed), jnp.float32(temperature)
    token, carry = self._start(self.params, prompt, key, temp)
    tokens = [token]
    for i in range(1, length):
      token, carry = self._step(self.params, token, carry, key, np.int32(i), temp)
      tokens.append(token)
      if i == 1:  # the step is compiled: time the rest
        token.block_until_ready()
        start = time.perf_counter()
    out = np.stack(jax.device_get(tokens), axis=1)
    if length > 2:
      self.tokens_per_s = (length - 2) * num_samples / (time.perf_counter() - start)
    return out


def prompt_ids(run: Run, prompt: str) -> tuple[np.ndarray, np.ndarray]:
  """(ids fed to the model, ids shown in the text): the prompt's ids, or a line break for an
  empty prompt (shown as nothing). Unknown tokens are read as the vocabulary reads them."""
  vocab = run.vocab
  ids, unknown = vocab.encode_prompt(prompt)
  if unknown:
    logging.warning('%d token(s) of the prompt are not in the vocabulary (%s)', unknown,
                    'dropped' if vocab.unk_id is None else 'read as <unk>')
  if len(ids):
    return ids, ids
  if vocab.start_id is None:
    raise ConfigError('give a --prompt: the vocabulary has no line break to start from')
  return np.asarray([vocab.start_id], np.int32), ids


def sample(run: Run, prompt: str = '', length: int = 200, temperature: float = 1.0,
           top_k: Optional[int] = None, seed: int = 0, num_samples: int = 1) -> list[str]:
  """`num_samples` texts, each the prompt followed by `length` drawn tokens."""
  model, params = language_model(run, 'forward')
  fed, shown = prompt_ids(run, prompt)
  sampler = Sampler(model, params, top_k)
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  sizes = lambda: (f'{num_samples:,} samples (--num_samples) of {len(fed)} + {length} tokens '
                   f'and {num_params:,} parameters')
  with faults.out_of_memory_reported(sizes, 'use a smaller --num_samples (the samples are '
                                     'drawn together, in one batch)'):
    tokens = sampler.generate(fed, length, temperature, seed, num_samples)
  logging.info('%d x %d tokens; %.0f tokens/s once compiled', num_samples, length,
               sampler.tokens_per_s)
  return [run.vocab.decode(np.concatenate([shown, row])) for row in tokens]


def main(argv) -> None:
  cli.no_arguments(argv)
  flags = cli.FLAGS
  run = load_run(flags.workdir, flags.step)
  cli.output('\n----\n'.join(sample(run, flags.prompt, flags.length, flags.temperature,
                                    flags.top_k, flags.seed, flags.num_samples)))


def _define_flags(flags) -> None:
  cli.define_run_flags()
  flags.DEFINE_string('prompt', '', 'Text the sample continues (empty: start after a line break).')
  flags.DEFINE_integer('length', 200, 'Tokens to draw (characters, bytes or words).')
  flags.DEFINE_float('temperature', 1.0, 'Softmax temperature; 0 takes the most likely token.')
  flags.DEFINE_integer('top_k', None, 'Draw from the k most likely tokens only.')
  flags.DEFINE_integer('seed', 0, 'The random seed: the same seed gives the same text.')
  flags.DEFINE_integer('num_samples', 1, 'Samples to draw (in one batch).')


if __name__ == '__main__':
  from absl import flags as absl_flags
  _define_flags(absl_flags)
  cli.run(main)
