"""Norms a stack can place between its layers, by name: `between='rmsnorm'`, `norm='layernorm'`.

A kind is one entry of `REGISTRY`: a function of (dtype, param_dtype, name) returning a Flax
module that normalises the last axis. Adding a kind is one entry here (and its name in the
trainer's `configs/common.py` comment).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    # Ba et al. 2016: (x - mean) / std * scale + bias over the features; Flax's epsilon 1e-6.
    'layernorm': lambda dtype, param_dtype, name: nn.LayerNorm(
        dtype=dtype, param_dtype=param_dtype, name=name),
    # Zhang & Sennrich 2019: x / rms(x) * scale, no mean and no bias; Flax's epsilon 1e-6.
    'rmsnorm': lambda dtype, param_dtype, name: nn.RMSNorm(
        dtype=dtype, param_dtype=param_dtype, name=name),
}


def names() -> list[str]:
  """The registered norm names, sorted."""
  return sorted(REGISTRY)


def get(kind: str, argument: str = 'norm') -> Callable[..., nn.Module]:
  """The module factory of norm `kind`; ValueError naming `argument` when it is not known."""
  if isinstance(kind, str) and kind.lower() in REGISTRY:
    return REGISTRY[kind.lower()]
  raise ValueError(f'{argument}={kind!r} is not a known norm; use one of: {", ".join(names())}')


def make(kind: str, dtype: Any, param_dtype: Any, name: str) -> nn.Module:
  """A norm module of `kind` named `name`."""
  return get(kind)(dtype, param_dtype, name)
