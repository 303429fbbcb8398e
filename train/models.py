"""The models around `lstm.StackedLSTM`; `train.objectives` builds the one each kind of dataset
needs.

- `LanguageModel`: embedding -> dropout -> stack -> dropout -> softmax head (optionally tied).
- `BiLanguageModel`: ELMo's pair of language models, forward and backward, sharing embedding and
  softmax.
- `SequenceClassifier`: stack -> the last valid step (or a masked mean) -> dense head; with one
  output it is the regressor of the adding problem.
- `SequenceTagger`: stack -> a dense head on every step (copy task; CTC for speech, with the
  blank as the last class).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm import StackedLSTM

# Every StackedLSTM option is a field of `config.model` of the same name (configs/common.py), but
# those that hold functions, per-layer mappings or dtypes, which the config spells otherwise.
NOT_IN_CONFIG = ('cells', 'kernel_init', 'recurrent_kernel_init', 'bias_init', 'dtype',
                 'param_dtype')
STACK_FIELDS = tuple(f.name for f in dataclasses.fields(StackedLSTM)
                     if f.name not in NOT_IN_CONFIG + ('parent', 'name'))
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
POOLINGS = ('last', 'mean')


def _uniform(scale: float):
  """U(-scale, scale), Zaremba's initialisation of every weight."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def stack_kwargs(model_config) -> dict[str, Any]:
  """StackedLSTM keyword arguments from `config.model` (names are shared one to one)."""
  kwargs = {name: model_config[name] for name in STACK_FIELDS}
  kwargs['dtype'] = DTYPES[model_config.dtype]
  scale = model_config.init_scale
  if scale:
    kwargs.update(kernel_init=_uniform(scale), recurrent_kernel_init=_uniform(scale))
  return kwargs


def _dense(features, scale, dtype, name):
  init = _uniform(scale) if scale else nn.initializers.lecun_normal()
  return nn.Dense(features, kernel_init=init, dtype=dtype, name=name)


def _last_valid(y: jax.Array, lengths: jax.Array, bidirectional: bool) -> jax.Array:
  """Output at each sequence's last valid step; for a bidirectional stack the backward half is
  taken at step 0, where that direction has read the whole sequence."""
  last = jnp.take_along_axis(y, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
  if not bidirectional:
    return last
  half = y.shape[-1] // 2
  return jnp.concatenate([last[:, :half], y[:, 0, half:]], axis=-1)


class LanguageModel(nn.Module):
  vocab_size: int
  embed_size: int
  stack: dict
  embed_dropout: float = 0.0
  output_dropout: float = 0.0
  tie_embeddings: bool = False
  init_scale: float = 0.0

  def _embed_and_head(self):
    """The embedding and the softmax head (None when tied to the embedding)."""
    dtype = self.stack.get('dtype')
    embed_init = _uniform(self.init_scale) if self.init_scale else nn.initializers.normal(1.0)
    embed = nn.Embed(self.vocab_size, self.embed_size, embedding_init=embed_init, dtype=dtype,
                     name='embed')
    head = None if self.tie_embeddings else _dense(self.vocab_size, self.init_scale, dtype, 'head')
    return embed, head

  def _direction(self, embed, head, tokens, initial_carry, deterministic, name,
                 segment_starts=None):
    """Logits and final carries of one stack reading `tokens`."""
    x = nn.Dropout(self.embed_dropout)(embed(tokens), deterministic=deterministic)
    y, carries = StackedLSTM(**self.stack, name=name)(x, initial_carry=initial_carry,
                                                      deterministic=deterministic,
                                                      segment_starts=segment_starts)
    y = nn.Dropout(self.output_dropout)(y, deterministic=deterministic)
    logits = embed.attend(y) if head is None else head(y)
    return logits.astype(jnp.float32), carries

  @nn.compact
  def __call__(self, tokens, initial_carry=None, deterministic=True, segment_starts=None):
    embed, head = self._embed_and_head()
    return self._direction(embed, head, tokens, initial_carry, deterministic, 'lstm',
                           segment_starts)


class BiLanguageModel(LanguageModel):
  """ELMo's biLM: a forward and a backward language model, each its own stack reading its own
  stream (the backward one reads the text reversed), sharing the embedding and the softmax."""

  @nn.compact
  def __call__(self, tokens, tokens_rev, initial_carry=None, deterministic=True,
               segment_starts=None, segment_starts_rev=None):
    embed, head = self._embed_and_head()
    logits, carries = [], []
    for i, (name, x, starts) in enumerate((('forward', tokens, segment_starts),
                                           ('backward', tokens_rev, segment_starts_rev))):
      carry = None if initial_carry is None else initial_carry[i]
      out, c = self._direction(embed, head, x, carry, deterministic, name, starts)
      logits.append(out)
      carries.append(c)
    return tuple(logits), tuple(carries)


class SequenceClassifier(nn.Module):
  num_outputs: int
  stack: dict
  vocab_size: Optional[int] = None
  embed_size: int = 0
  pooling: str = 'last'

  @nn.compact
  def __call__(self, inputs, lengths, deterministic=True):
    x = inputs
    if self.vocab_size is not None:
      x = nn.Embed(self.vocab_size, self.embed_size, name='embed')(inputs)
    y, _ = StackedLSTM(**self.stack, name='lstm')(x, seq_lengths=lengths,
                                                  deterministic=deterministic)
    if self.pooling == 'mean':
      pooled = y.sum(1) / jnp.maximum(lengths, 1)[:, None].astype(y.dtype)
    else:
      pooled = _last_valid(y, lengths, self.stack.get('bidirectional', False))
    out = nn.Dense(self.num_outputs, dtype=self.stack.get('dtype'), name='head')(pooled)
    return out.astype(jnp.float32)


class SequenceTagger(nn.Module):
  num_outputs: int
  stack: dict
  vocab_size: Optional[int] = None
  embed_size: int = 0

  @nn.compact
  def __call__(self, inputs, lengths=None, deterministic=True):
    x = inputs
    if self.vocab_size is not None:
      x = nn.Embed(self.vocab_size, self.embed_size, name='embed')(inputs)
    y, _ = StackedLSTM(**self.stack, name='lstm')(x, seq_lengths=lengths,
                                                  deterministic=deterministic)
    out = nn.Dense(self.num_outputs, dtype=self.stack.get('dtype'), name='head')(y)
    return out.astype(jnp.float32)
