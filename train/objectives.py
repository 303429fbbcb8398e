"""The objective of each kind of dataset: the model it builds, the model's inputs from a batch, the
loss sums, what evaluation adds, and the summary metrics.

One `Objective` class per kind of dataset (`Dataset.kind`):

  lm        language models over a token stream; the LSTM state is carried from batch to batch
  classify  one label per sequence
  per_step  one target per step, with loss weights (copy task)
  regress   one float per sequence (adding problem)
  ctc       a label sequence per utterance: CTC loss, greedy decoding in evaluation

`for_dataset(dataset)` gives the objective of a dataset; the trainer, the evaluator and the tests
ask it, and nothing else switches on the kind. Adding a kind is adding one class to `OBJECTIVES`.
Loss sums are sums over the batch, so evaluation adds batches exactly.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import metrics, models


# config.loss_reduction, what the training step differentiates: the mean over tokens, or the sum
# over time steps of the mean over sequences (Zaremba's and TensorFlow's PTB code; their learning
# rates assume it)
LOSS_REDUCTIONS = ('token', 'sequence')


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _full_lengths(inputs) -> jax.Array:
  return jnp.full(inputs.shape[:1], inputs.shape[1], jnp.int32)


class Objective:
  """The behaviour shared by every kind; each kind's class changes what differs."""
  kind: ClassVar[str] = ''
  stream: ClassVar[bool] = False  # batches are contiguous rows of one stream; state is carried
  # batch key -> Split field, for kinds whose batches are whole examples
  batch_fields: ClassVar[Mapping[str, str]] = {}

  def __init__(self, dataset):
    self.dataset = dataset

  def build_model(self, config) -> nn.Module:
    raise NotImplementedError

  def model_inputs(self, batch) -> dict[str, Any]:
    """The model's keyword arguments for `batch` (also what the parameters are initialised on)."""
    lengths = batch['lengths'] if 'lengths' in batch else _full_lengths(batch['inputs'])
    return {'inputs': batch['inputs'], 'lengths': lengths}

  def apply(self, model, params, batch, carry, rng, train: bool):
    """Runs the model on a batch; returns (outputs, the carry to pass to the next batch)."""
    rngs = {'dropout': rng} if train else {}
    return model.apply({'params': params}, **self.model_inputs(batch), deterministic=not train,
                       rngs=rngs), ()

  def loss_sums(self, outputs, batch) -> dict[str, jax.Array]:
    """{'loss': sum, 'count': weight, 'correct': sum (classification)} for one batch."""
    raise NotImplementedError

  def eval_outputs(self, outputs) -> dict[str, jax.Array]:
    """Arrays evaluation brings to the host for `host_sums`."""
    return {}

  def host_sums(self, fetched: Mapping[str, np.ndarray], host_batch) -> dict[str, float]:
    """Sums evaluation computes on the host from `eval_outputs`."""
    return {}

  def derived(self, loss: float) -> dict[str, float]:
    """Metrics that follow from the mean loss (bits per character, perplexity)."""
    return {}

  def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
    """Mean loss, accuracy and the derived metrics from the sums over a split."""
    count = max(float(sums['count']), 1e-12)
    out = {'loss': float(sums['loss']) / count}
    if 'correct' in sums:
      out['accuracy'] = float(sums['correct']) / count
    out.update(self.derived(out['loss']))
    return out


class LanguageModelObjective(Objective):
  kind = 'lm'
  stream = True

  def build_model(self, config) -> nn.Module:
    m = config.model
    cls = models.BiLanguageModel if m.bilm else models.LanguageModel
    return cls(vocab_size=self.dataset.vocab_size, embed_size=m.embed_size or m.hidden_size,
               stack=models.stack_kwargs(m), embed_dropout=m.embed_dropout,
               output_dropout=m.output_dropout, tie_embeddings=m.tie_embeddings,
               init_scale=m.init_scale)

  def model_inputs(self, batch):
    inputs = {'tokens': batch['inputs']}
    if 'inputs_rev' in batch:  # biLM: the backward model reads the reversed stream
      inputs['tokens_rev'] = batch['inputs_rev']
    if 'segment_starts' in batch:  # documents: the state is reset where one begins
      inputs['segment_starts'] = batch['segment_starts']
      if 'inputs_rev' in batch:
        inputs['segment_starts_rev'] = batch['segment_starts_rev']
    return inputs

  def apply(self, model, params, batch, carry, rng, train: bool):
    rngs = {'dropout': rng} if train else {}
    return model.apply({'params': params}, **self.model_inputs(batch), initial_carry=carry,
                       deterministic=not train, rngs=rngs)

  def loss_sums(self, outputs, batch):
    if isinstance(outputs, tuple):  # biLM: forward and backward models, each on its own stream
      forward = self.loss_sums(outputs[0], batch)
      backward = self.loss_sums(outputs[1], {'targets': batch['targets_rev']})
      total = jax.tree.map(jnp.add, forward, backward)
      return {**total, 'loss_forward': forward['loss'], 'loss_backward': backward['loss']}
    xent = _xent(outputs, batch['targets'])
    correct = (outputs.argmax(-1) == batch['targets'])
    return {'loss': xent.sum(), 'count': jnp.asarray(xent.size, jnp.float32),
            'correct': correct.sum().astype(jnp.float32)}

  def derived(self, loss):
    if self.dataset.level in ('char', 'byte'):
      return {'bpc': loss / math.log(2)}
    return {'perplexity': math.exp(min(loss, 50.0))}

  def summarize(self, sums):
    out = super().summarize(sums)
    half = max(float(sums['count']), 1e-12) / 2
    for direction in ('forward', 'backward'):
      if f'loss_{direction}' in sums:
        loss = float(sums[f'loss_{direction}']) / half
        out.update({f'{k}_{direction}': v
                    for k, v in {'loss': loss, **self.derived(loss)}.items()})
    return out


class ClassifyObjective(Objective):
  kind = 'classify'
  batch_fields = {'inputs': 'inputs', 'labels': 'targets', 'lengths': 'lengths'}

  def num_outputs(self) -> int:
    return self.dataset.num_classes

  def build_model(self, config) -> nn.Module:
    m = config.model
    return models.SequenceClassifier(
        num_outputs=self.num_outputs(), stack=models.stack_kwargs(m),
        vocab_size=self.dataset.vocab_size, embed_size=m.embed_size or m.hidden_size,
        pooling=m.pooling)

  def loss_sums(self, outputs, batch):
    valid = batch['valid']
    xent = _xent(outputs, batch['labels'])
    correct = (outputs.argmax(-1) == batch['labels'])
    return {'loss': (xent * valid).sum(), 'count': valid.sum(), 'correct': (correct * valid).sum()}


class RegressObjective(ClassifyObjective):
  kind = 'regress'
  batch_fields = {'inputs': 'inputs', 'targets': 'targets'}

  def num_outputs(self) -> int:
    return 1

  def loss_sums(self, outputs, batch):
    valid = batch['valid']
    err = jnp.square(outputs[:, 0] - batch['targets'])
    return {'loss': (err * valid).sum(), 'count': valid.sum()}


class PerStepObjective(Objective):
  kind = 'per_step'
  batch_fields = {'inputs': 'inputs', 'targets': 'targets', 'weights': 'weights'}

  def num_outputs(self) -> int:
    return self.dataset.num_classes

  def build_model(self, config) -> nn.Module:
    m = config.model
    return models.SequenceTagger(num_outputs=self.num_outputs(), stack=models.stack_kwargs(m),
                                 vocab_size=self.dataset.vocab_size,
                                 embed_size=m.embed_size or m.hidden_size)

  def model_inputs(self, batch):
    return {'inputs': batch['inputs']}

  def loss_sums(self, outputs, batch):
    weights = batch['weights'] * batch['valid'][:, None]
    xent = _xent(outputs, batch['targets'])
    correct = (outputs.argmax(-1) == batch['targets'])
    return {'loss': (xent * weights).sum(), 'count': weights.sum(),
            'correct': (correct * weights).sum()}


class CTCObjective(PerStepObjective):
  """Label sequences under CTC; the blank is the class after the labels (`num_classes`)."""
  kind = 'ctc'
  batch_fields = {'inputs': 'inputs', 'targets': 'targets', 'weights': 'weights',
                  'lengths': 'lengths'}

  def num_outputs(self) -> int:
    return self.dataset.num_classes + 1

  def model_inputs(self, batch):
    return Objective.model_inputs(self, batch)

  def loss_sums(self, outputs, batch):  # loss per utterance
    frames = jnp.arange(outputs.shape[1])[None, :]
    logit_paddings = (frames >= batch['lengths'][:, None]).astype(jnp.float32)
    labels = jnp.where(batch['weights'] > 0, batch['targets'], 0)
    per_utterance = optax.ctc_loss(outputs, logit_paddings, labels, 1.0 - batch['weights'],
                                   blank_id=outputs.shape[-1] - 1)
    return {'loss': (per_utterance * batch['valid']).sum(), 'count': batch['valid'].sum()}

  def eval_outputs(self, outputs):  # the frame-wise best class, decoded on the host
    return {'best_path': outputs.argmax(-1)}

  def host_sums(self, fetched, host_batch):
    return metrics.ctc_errors(fetched['best_path'], host_batch, blank=self.dataset.num_classes)

  def summarize(self, sums):
    out = super().summarize(sums)
    if 'label_errors' in sums:
      out['label_error_rate'] = float(sums['label_errors']) / max(float(sums['labels']), 1.0)
    return out


OBJECTIVES: dict[str, type[Objective]] = {cls.kind: cls for cls in (
    LanguageModelObjective, ClassifyObjective, PerStepObjective, RegressObjective, CTCObjective)}


def for_dataset(dataset) -> Objective:
  """The objective of `dataset` (by its kind)."""
  if dataset.kind not in OBJECTIVES:
    raise ValueError(f'dataset kind {dataset.kind!r} is not one of {", ".join(OBJECTIVES)}')
  return OBJECTIVES[dataset.kind](dataset)
