"""Stacked-LSTM benchmark: this project against PyTorch, Flax and Keras, in one process.

Run by hand (never in CI), on an otherwise idle machine:

    python bench/bench_lstm.py                    # all parts, several minutes
    python bench/bench_lstm.py --part speed       # step times only
    python bench/bench_lstm.py --part compile     # compile time and memory only
    python bench/bench_lstm.py --part options     # what each cell option costs in training
    python bench/bench_lstm.py --part bf16        # bfloat16 compute against PyTorch's autocast
    python bench/bench_lstm.py --part loop        # a step's matmul against the work between
    python bench/bench_lstm.py --quick --out /tmp/bench   # smoke run, seconds

Results are kept per CPU kind: by default it writes `bench/results/<cpu-slug>/` (`cpu_slug` of the
`model name` in /proc/cpuinfo, e.g. `amd-epyc`, with the CPU family and model appended to a name
that has no model number: `amd-epyc-family-26-model-2`), so a run on one kind of machine never overwrites
another's table; `--quick` without `--out` writes to a temporary folder, never the results.

Part `speed` times one training step (forward + backward + Adam; a linear head to 128 classes and
cross-entropy on every step; input 128, hidden 256, batch 32, T=128, float32) of:
  project      this project's `StackedLSTM` (batch-major input), on the path it dispatches to;
  project-ref  the same model forced onto the reference `lax.scan` path (`lstm.fast.reference_path`);
  project-xla  the same model with the fast path's XLA loops instead of the CPU kernel
               (`lstm.native.disabled`);
  pytorch      `torch.nn.LSTM` (oneDNN), default threads;
  flax         `flax.linen.RNN(OptimizedLSTMCell)` layers in a Python loop;
  keras        Keras 3 `LSTM` on the JAX backend, stateless jitted train step.
Cases: 2 and 4 layers, forward only at 2 layers, bidirectional at 2 layers, T=1024 at 2 layers.
All implementations run interleaved in the same process (the order rotates every repetition);
the tables give the median and the min over repetitions, tokens/s, the ratio to PyTorch and the
fraction of the fp32 matmul peak (measured with a large `jnp.dot`; LSTM FLOPs counted
analytically, matmuls only).

Part `compile` measures trace+lower and XLA compile time of the training step against depth
(2..32 layers) with and without `scan_layers=True`, and the temp memory XLA plans for a T=4096
training step with and without `remat=True` (`jitted.lower(...).compile().memory_analysis()`,
deterministic).

Part `options` times the speed part's 2-layer training step in training mode with one cell option
at a time (recurrent dropout, weight drop, CIFG, segment resets, Greff's variants, peepholes,
zoneout), interleaved with the canonical step on both paths, and records which path each took.

Part `bf16` runs the 2-layer training and forward-only cases in float32 and with bfloat16
compute, this project (`StackedLSTM(dtype=bfloat16)`: the CPU kernel's bfloat16 calls where the CPU
has AVX512-BF16, `project-bf16-xla` the XLA loops it runs elsewhere) against PyTorch under
`torch.autocast`.

Part `loop` times a loop whose steps multiply (B, H) by (H, 4H) and then run a number of
elementwise passes, in JAX and in PyTorch, to show what a step's matmul costs against the work
between two matmuls (on an Intel Xeon it grew with that work, in both).

`--memory keep` (the default) sets malloc to keep freed memory (`lstm.memory`) for the whole
process, so for every implementation, as the trainer does; `--memory release` leaves glibc's
defaults, under which every step of JAX and PyTorch alike page-faults its fresh buffers (files
`bench_<part>_release.*`).

It writes `<out>/bench_<part>.json` and `<out>/bench_<part>.md`; the machine (CPU model, cores,
versions, load) is in the JSON's `machine` and the Markdown's heading, and every row of the JSON
also names its CPU (`cpu`). bench/bench_gpu.py reuses the builders and the timing loop here.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lstm import StackedLSTM  # noqa: E402
from lstm.loop_order import cpu_name as cpu_model  # noqa: E402

try:
  from lstm import fast as lstm_fast  # noqa: E402
except ImportError:  # before the fast path exists
  lstm_fast = None

F_IN, HIDDEN, BATCH, STEPS, CLASSES = 128, 256, 32, 128, 128
LR = 1e-3


# ----------------------------------------------------------------------------------------------
# Workload and FLOP count


def lstm_flops(layers, f_in, hidden, batch, steps, classes, dirs=1, train=True):
  """Matmul FLOPs of one step: forward, plus dX and dW of every matmul when training.

  The input x needs no gradient, so the first layer's input projection has no dX.
  """
  fwd, width = 0, f_in
  for _ in range(layers):
    fwd += dirs * 2 * batch * steps * (width * 4 * hidden + hidden * 4 * hidden)
    width = dirs * hidden
  fwd += 2 * batch * steps * width * classes
  if not train:
    return fwd
  first_dx = dirs * 2 * batch * steps * f_in * 4 * hidden
  return fwd + fwd + (fwd - first_dx)


def case_size(case):
  """(hidden, batch) of a case: `hidden` and `batch` keys, else the defaults HIDDEN and BATCH."""
  return case.get('hidden', HIDDEN), case.get('batch', BATCH)


def make_data(batch, steps, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, steps, F_IN), dtype=np.float32)
  y = rng.integers(0, CLASSES, (batch, steps)).astype(np.int32)
  return x, y


# ----------------------------------------------------------------------------------------------
# JAX implementations (project, Flax, Keras) share one trainer


class ProjectNet(nn.Module):
  layers: int
  hidden: int
  bidirectional: bool = False
  scan_layers: bool = False
  remat: bool = False
  options: tuple = ()  # (name, value) pairs of further StackedLSTM options

  @nn.compact
  def __call__(self, x, deterministic=True, segment_starts=None):
    y, _ = StackedLSTM(num_layers=self.layers, hidden_size=self.hidden,
                       bidirectional=self.bidirectional, scan_layers=self.scan_layers,
                       remat=self.remat, **dict(self.options))(
                           x, deterministic=deterministic, segment_starts=segment_starts)
    return nn.Dense(CLASSES)(y)


class FlaxNet(nn.Module):
  layers: int
  hidden: int
  bidirectional: bool = False

  @nn.compact
  def __call__(self, x):
    for _ in range(self.layers):
      if self.bidirectional:
        x = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(self.hidden)),
                             nn.RNN(nn.OptimizedLSTMCell(self.hidden)))(x)
      else:
        x = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(x)
    return nn.Dense(CLASSES)(x)


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


class JaxRunner:
  """Holds params and optimizer state; `step()` runs one compiled step and blocks."""

  def __init__(self, apply, params, x, y, train, context=contextlib.nullcontext):
    self.x, self.y = jnp.asarray(x), jnp.asarray(y)
    self.train = train
    tx = optax.adam(LR)
    self.params = params
    self.opt_state = tx.init(params)

    def loss_fn(p, x, y):
      return _xent(apply(p, x), y)

    if train:
      def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss
      with context():
        t0 = time.perf_counter()
        lowered = jax.jit(step, donate_argnums=(0, 1)).lower(
            self.params, self.opt_state, self.x, self.y)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
    else:
      with context():
        t0 = time.perf_counter()
        lowered = jax.jit(loss_fn).lower(self.params, self.x, self.y)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
    self.lower_s, self.compile_s = t1 - t0, t2 - t1
    self.step()  # warm-up

  def run(self, n):
    """`n` steps dispatched back to back, then one wait for the last: on an accelerator this
    times the device, not the host's round trips; on the CPU it is the same as n blocking steps
    (each step's parameters depend on the last step's)."""
    loss = None
    for _ in range(n):
      if self.train:
        self.params, self.opt_state, loss = self.compiled(self.params, self.opt_state, self.x,
                                                          self.y)
      else:
        loss = self.compiled(self.params, self.x, self.y)
    loss.block_until_ready()
    return loss

  def step(self):
    return self.run(1)


def _reference_context():
  if lstm_fast is None:
    return contextlib.nullcontext()
  return lstm_fast.reference_path()


def _xla_loop_context():
  from lstm import native
  return native.disabled()


def build_project(case, x, y, context=contextlib.nullcontext, dtype=None):
  options = () if dtype is None else (('dtype', dtype),)
  model = ProjectNet(case['layers'], case_size(case)[0], case.get('bidirectional', False),
                     options=options)
  params = model.init(jax.random.key(0), jnp.asarray(x[:1]))
  return JaxRunner(model.apply, params, x, y, case['train'], context)


def build_flax(case, x, y):
  model = FlaxNet(case['layers'], case_size(case)[0], case.get('bidirectional', False))
  params = model.init(jax.random.key(0), jnp.asarray(x[:1]))
  return JaxRunner(model.apply, params, x, y, case['train'])


def build_keras(case, x, y):
  import keras
  keras.utils.set_random_seed(0)
  inputs = keras.Input((x.shape[1], F_IN), batch_size=x.shape[0])
  h = inputs
  for _ in range(case['layers']):
    layer = keras.layers.LSTM(case_size(case)[0], return_sequences=True)
    if case.get('bidirectional'):
      layer = keras.layers.Bidirectional(layer)
    h = layer(h)
  logits = keras.layers.Dense(CLASSES)(h)
  model = keras.Model(inputs, logits)
  trainable = [v.value for v in model.trainable_variables]
  non_trainable = [v.value for v in model.non_trainable_variables]

  def apply(tv, x):
    logits, _ = model.stateless_call(tv, non_trainable, x, training=case['train'])
    return logits

  return JaxRunner(apply, trainable, x, y, case['train'])



# ----------------------------------------------------------------------------------------------
# PyTorch


class TorchRunner:
  """`torch.nn.LSTM` + linear head + Adam; `threads` overrides torch's thread count for its steps;
  `device='cuda'` runs it on the GPU (cuDNN's LSTM kernels); `autocast` runs the forward under
  `torch.autocast` in bfloat16 (the weights and Adam stay float32)."""

  def __init__(self, case, x, y, threads=None, device='cpu', autocast=False):
    import torch
    self.torch = torch
    self.threads = threads
    self.autocast = autocast
    self.device = torch.device(device)
    torch.manual_seed(0)
    hidden = case_size(case)[0]
    dirs = 2 if case.get('bidirectional') else 1
    self.lstm = torch.nn.LSTM(F_IN, hidden, case['layers'], batch_first=True,
                              bidirectional=dirs == 2).to(self.device)
    self.head = torch.nn.Linear(dirs * hidden, CLASSES).to(self.device)
    self.params = list(self.lstm.parameters()) + list(self.head.parameters())
    self.opt = torch.optim.Adam(self.params, lr=LR)
    self.x = torch.from_numpy(x).to(self.device)
    self.y = torch.from_numpy(y.astype(np.int64)).reshape(-1).to(self.device)
    self.train = case['train']
    self.lower_s = self.compile_s = 0.0
    self.step()

  def _loss(self):
    context = (self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)
               if self.autocast else contextlib.nullcontext())
    with context:
      out, _ = self.lstm(self.x)
      logits = self.head(out)
    return self.torch.nn.functional.cross_entropy(logits.float().reshape(-1, CLASSES), self.y)

  def _one(self):
    if self.train:
      self.opt.zero_grad(set_to_none=True)
      loss = self._loss()
      loss.backward()
      self.opt.step()
      return loss
    with self.torch.inference_mode():
      return self._loss()

  def run(self, n):
    """`n` steps, then one synchronisation (on CUDA, steps are queued like JAX's)."""
    previous = self.torch.get_num_threads()
    if self.threads:
      self.torch.set_num_threads(self.threads)
    try:
      for _ in range(n):
        loss = self._one()
      if self.device.type == 'cuda':
        self.torch.cuda.synchronize(self.device)
      return float(loss.detach())
    finally:
      if self.threads:
        self.torch.set_num_threads(previous)

  def step(self):
    return self.run(1)


# ----------------------------------------------------------------------------------------------
# Speed part


BUILDERS = {
    'project': lambda c, x, y: build_project(c, x, y),
    'project-ref': lambda c, x, y: build_project(c, x, y, context=_reference_context),
    'project-xla': lambda c, x, y: build_project(c, x, y, context=_xla_loop_context),
    'pytorch': TorchRunner,
    'pytorch-1t': lambda c, x, y: TorchRunner(c, x, y, threads=1),
    'flax': build_flax,
    'keras': build_keras,
    'project-bf16': lambda c, x, y: build_project(c, x, y, dtype=jnp.bfloat16),
    'project-bf16-xla': lambda c, x, y: build_project(c, x, y, context=_xla_loop_context,
                                                      dtype=jnp.bfloat16),
    'pytorch-bf16': lambda c, x, y: TorchRunner(c, x, y, autocast=True),
}


def measure_peak(n=2048, reps=8, dtype=jnp.float32):
  """Best GFLOP/s of a large jnp.dot on this machine (best of `reps`; the script measures it
  before, between and after the cases and keeps the best, since other load only lowers it); in
  bfloat16, the dot of bfloat16 operands accumulating in float32."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), dtype)
  b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n), dtype=np.float32), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  best = float('inf')
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e9


def speed_cases(quick):
  if quick:
    return [
        dict(name='train, 2 layers, T=16', layers=2, steps=16, train=True),
        dict(name='forward only, 2 layers, T=16', layers=2, steps=16, train=False),
        dict(name='train, bidirectional 2 layers, T=16', layers=2, steps=16, train=True,
             bidirectional=True),
    ]
  return [
      dict(name='train, 2 layers', layers=2, steps=STEPS, train=True),
      dict(name='train, 4 layers', layers=4, steps=STEPS, train=True),
      dict(name='forward only, 2 layers', layers=2, steps=STEPS, train=False),
      dict(name='train, bidirectional, 2 layers', layers=2, steps=STEPS, train=True,
           bidirectional=True),
      dict(name='train, 2 layers, T=1024', layers=2, steps=1024, train=True),
  ]


def time_interleaved(runners, reps, budget):
  """Seconds per step of each runner: `reps` repetitions, the order rotating every repetition,
  each timing `inner` steps (`runner.run(inner)`), with `inner` chosen so that the slowest runner
  takes about `budget` seconds. Returns ({name: [seconds per step, ...]}, inner)."""
  probe = {}
  for name, r in runners.items():
    t0 = time.perf_counter()
    r.run(1)
    probe[name] = time.perf_counter() - t0
  inner = max(1, int(budget / max(probe.values())))
  times = {name: [] for name in runners}
  order = list(runners)
  for rep in range(reps):
    k = rep % len(order)
    for name in order[k:] + order[:k]:
      t0 = time.perf_counter()
      runners[name].run(inner)
      times[name].append((time.perf_counter() - t0) / inner)
  return times, inner


def case_flops(case):
  hidden, batch = case_size(case)
  dirs = 2 if case.get('bidirectional') else 1
  return lstm_flops(case['layers'], F_IN, hidden, batch, case['steps'], CLASSES, dirs,
                    case['train'])


def run_case(case, impls, reps, peak, log, cpu=None):
  hidden, batch = case_size(case)
  x, y = make_data(batch, case['steps'])
  runners = {}
  for name in impls:
    t0 = time.perf_counter()
    runners[name] = BUILDERS[name](case, x, y)
    log(f'  built {name} in {time.perf_counter() - t0:.1f} s')
  budget = 0.6 if case['steps'] <= 128 else 2.0  # seconds per implementation and repetition
  times, inner = time_interleaved(runners, reps, budget)
  flops = case_flops(case)
  rows = []
  torch_median = statistics.median(times['pytorch']) if 'pytorch' in times else None
  torch_min = min(times['pytorch']) if 'pytorch' in times else None
  for name in runners:
    med, best = statistics.median(times[name]), min(times[name])
    rows.append(dict(
        impl=name, cpu=cpu, median_ms=med * 1e3, min_ms=best * 1e3,
        tokens_per_s=batch * case['steps'] / med,
        ratio_to_pytorch=None if torch_median is None else med / torch_median,
        ratio_to_pytorch_min=None if torch_min is None else best / torch_min,
        peak_fraction=flops / med / (peak * 1e9),
        compile_s=runners[name].compile_s, times_ms=[t * 1e3 for t in times[name]]))
    log(f'  {name:12s} median {med * 1e3:8.1f} ms  min {best * 1e3:8.1f} ms  '
        f'ratio {rows[-1]["ratio_to_pytorch"] or 0:.3f} (min {rows[-1]["ratio_to_pytorch_min"] or 0:.3f})')
  return dict(case=case, inner_steps=inner, repetitions=reps, gflop=flops / 1e9, rows=rows)


# ----------------------------------------------------------------------------------------------
# bf16 part: bfloat16 compute against PyTorch's bfloat16 autocast


BF16_IMPLS = ('project', 'project-bf16', 'project-bf16-xla', 'pytorch', 'pytorch-bf16')


def bf16_part(quick, log, reps, cpu=None):
  """The speed part's 2-layer training and forward-only cases in float32 and in bfloat16 compute
  (this project: `StackedLSTM(dtype=bfloat16)`, float32 parameters and float32 elementwise math,
  on the CPU kernel where `lstm.native.bf16_available()`, and on the XLA loops; PyTorch:
  `torch.autocast('cpu', bfloat16)`, which runs `nn.LSTM` through oneDNN in bfloat16), all five
  interleaved per case."""
  from lstm import native
  cases = [c for c in speed_cases(quick) if c['layers'] == 2 and not c.get('bidirectional')][:2]
  peak = measure_peak(1024 if quick else 2048)
  return dict(bf16_kernel=native.bf16_available(),
              cases=[run_case(c, BF16_IMPLS, reps, peak, log, cpu) for c in cases])


def bf16_markdown(result):
  info = result['machine']
  lines = [
      f'### bfloat16 compute: {info["cpu"]}, {info["cores"]} cores',
      '',
      f'jax {info["jax"]}, flax {info["flax"]}, torch {info["torch"]} '
      f'({info["torch_threads"]} threads); 1-minute load average {info["loadavg"][0]:.2f} at '
      f'start; {info["date"]}, commit {info["commit"]}.',
      f'Batch {BATCH}, input {F_IN}, hidden {HIDDEN}, T={result["cases"][0]["case"]["steps"]}, '
      f'head to {CLASSES} classes, Adam on '
      'float32 parameters. project-bf16 = `StackedLSTM(dtype=jnp.bfloat16)` (bfloat16 matmuls '
      'accumulating in float32, float32 elementwise math), '
      + ('on the CPU kernel (this CPU has AVX512-BF16)' if result.get('bf16_kernel')
         else "on the XLA loops (this CPU lacks AVX512-BF16, or the kernel's bfloat16 calls did "
              'not build)')
      + '; project-bf16-xla = the same on the XLA loops (`lstm.native.disabled()`); '
      'pytorch-bf16 = the forward under `torch.autocast("cpu", dtype=torch.bfloat16)`. All '
      'interleaved; ratios of medians.',
      f'Command: `{result["command"]}`',
      '',
      '| case | implementation | median ms | min ms | vs PyTorch float32 | vs PyTorch bfloat16 |',
      '|---|---|---:|---:|---:|---:|',
  ]
  for c in result['cases']:
    med = {r['impl']: r['median_ms'] for r in c['rows']}
    for r in c['rows']:
      lines.append(f'| {c["case"]["name"]} | {r["impl"]} | {r["median_ms"]:.1f} | '
                   f'{r["min_ms"]:.1f} | {r["median_ms"] / med["pytorch"]:.2f}x | '
                   f'{r["median_ms"] / med["pytorch-bf16"]:.2f}x |')
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------------------------
# Loop part: what a step's matmul costs inside a compiled loop, against the work between matmuls


LOOP_GAPS = (0, 1, 2, 4, 8, 12)


def _loop_runners(gap, batch, hidden, steps):
  """Per-step seconds of a `steps`-step loop whose body is h (B, H) times w (H, 4H) followed by
  `gap` dependent tanh passes over the (B, 4H) result (each kept a separate kernel), and of the
  same loop without the matmul; JAX (one jitted fori_loop) and PyTorch (eager, default threads)."""
  import torch
  rng = np.random.default_rng(0)
  w_np = (rng.standard_normal((hidden, 4 * hidden)) * 0.05).astype(np.float32)
  h_np = rng.standard_normal((batch, hidden)).astype(np.float32)
  barrier = jax.lax.optimization_barrier

  def jax_loop(with_dot):
    def body(_, h):
      z = h @ w if with_dot else jnp.tile(h, (1, 4))
      for _ in range(gap):
        z = barrier(jnp.tanh(z))
      return z[:, :hidden] * 0.5 + z[:, hidden:2 * hidden] * 0.5
    f = jax.jit(lambda h: jax.lax.fori_loop(0, steps, body, h))
    return lambda: f(h0).block_until_ready()

  w, h0 = jnp.asarray(w_np), jnp.asarray(h_np)
  tw, th = torch.from_numpy(w_np.copy()), torch.from_numpy(h_np.copy())

  def torch_loop(with_dot):
    def run():
      h = th
      with torch.inference_mode():
        for _ in range(steps):
          z = h @ tw if with_dot else h.repeat(1, 4)
          for _ in range(gap):
            z = torch.tanh(z)
          h = z[:, :hidden] * 0.5 + z[:, hidden:2 * hidden] * 0.5
      return h
    return run

  return {'jax, matmul': jax_loop(True), 'jax, no matmul': jax_loop(False),
          'pytorch, matmul': torch_loop(True), 'pytorch, no matmul': torch_loop(False)}


def loop_part(quick, log, reps, cpu=None):
  """For each number of elementwise passes between two steps' matmuls: the per-step time with and
  without the matmul, so the difference is what the matmul costs at that gap: a matmul split
  over both cores after work that left one of them idle."""
  steps = 16 if quick else STEPS
  rows = []
  for gap in LOOP_GAPS[:3] if quick else LOOP_GAPS:
    runners = _loop_runners(gap, BATCH, HIDDEN, steps)
    for fn in runners.values():
      fn()
    best = {}
    for _ in range(reps):
      for name, fn in runners.items():
        t0 = time.perf_counter()
        fn()
        best[name] = min(best.get(name, float('inf')), (time.perf_counter() - t0) / steps)
    row = dict(gap=gap, cpu=cpu, **{k: v * 1e6 for k, v in best.items()})
    row['jax matmul us'] = row['jax, matmul'] - row['jax, no matmul']
    row['pytorch matmul us'] = row['pytorch, matmul'] - row['pytorch, no matmul']
    rows.append(row)
    log(f'  gap {gap:2d}: jax matmul {row["jax matmul us"]:6.1f} us, '
        f'pytorch matmul {row["pytorch matmul us"]:6.1f} us')
  return dict(steps=steps, batch=BATCH, hidden=HIDDEN, repetitions=reps, rows=rows)


def loop_markdown(result):
  info = result['machine']
  lines = [
      f'### A step\'s matmul inside a loop: {info["cpu"]}, {info["cores"]} cores',
      '',
      f'jax {info["jax"]}, torch {info["torch"]} ({info["torch_threads"]} threads); 1-minute '
      f'load average {info["loadavg"][0]:.2f} at start; {info["date"]}, commit {info["commit"]}.',
      f'A {result["steps"]}-step loop; each step multiplies h ({result["batch"]}, '
      f'{result["hidden"]}) by w ({result["hidden"]}, {4 * result["hidden"]}) and then runs '
      '"passes" dependent tanh passes over the (B, 4H) result, each its own kernel (XLA: '
      'behind `optimization_barrier`); "matmul" = the step time minus that of the same loop '
      'without the matmul. Best of the interleaved repetitions, microseconds per step.',
      f'Command: `{result["command"]}`',
      '',
      '| passes between matmuls | JAX step | JAX without matmul | JAX matmul | PyTorch step '
      '| PyTorch without matmul | PyTorch matmul |',
      '|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in result['rows']:
    lines.append(f'| {r["gap"]} | {r["jax, matmul"]:.1f} | {r["jax, no matmul"]:.1f} | '
                 f'{r["jax matmul us"]:.1f} | {r["pytorch, matmul"]:.1f} | '
                 f'{r["pytorch, no matmul"]:.1f} | {r["pytorch matmul us"]:.1f} |')
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------------------------
# Options part: what each cell option costs in the training step


OPTION_CASES = [  # (label, StackedLSTM options, segment resets)
    ('canonical', {}, False),
    ('recurrent_dropout=0.25', {'recurrent_dropout': 0.25}, False),
    ('weight_drop=0.5', {'weight_drop': 0.5}, False),
    ('coupled_gates (CIFG)', {'coupled_gates': True}, False),
    ('segment_starts (a reset every 32 steps on average)', {}, True),
    ('candidate_activation=linear (NIAF)', {'candidate_activation': 'linear'}, False),
    ('output_activation=linear (NOAF)', {'output_activation': 'linear'}, False),
    ('peephole', {'peephole': True}, False),
    ('input_gate=False (NIG)', {'input_gate': False}, False),
    ('zoneout_cell=zoneout_hidden=0.1', {'zoneout_cell': 0.1, 'zoneout_hidden': 0.1}, False),
]


def build_option(options, resets, x, y, reference=False):
  """The 2-layer training step with `options`, in training mode (the dropout stream drawn every
  step from a fixed key, as a trainer would fold in the step), and segment starts if `resets`."""
  model = ProjectNet(2, HIDDEN, options=tuple(sorted(options.items())))
  starts = None
  if resets:
    starts = jnp.asarray(np.random.default_rng(1).random(x.shape[:2]) < 1 / 32)
  params = model.init(jax.random.key(0), jnp.asarray(x[:1]))
  key = jax.random.key(1)
  apply = lambda p, x: model.apply(p, x, deterministic=False, segment_starts=starts,
                                   rngs={'dropout': key})
  context = _reference_context if reference else contextlib.nullcontext
  return JaxRunner(apply, params, x, y, True, context)


def options_part(quick, log, reps, cpu=None):
  """Step times of the 2-layer training step (the speed part's workload) with each cell option,
  interleaved with the canonical step on both paths; which path each option takes is
  `lstm.fast.supports`' answer, recorded from the trace."""
  steps = 16 if quick else STEPS
  x, y = make_data(BATCH, steps)
  runners, paths = {}, {}
  for label, options, resets in OPTION_CASES[:3] if quick else OPTION_CASES:
    calls = []
    original = lstm_fast.run_layer
    lstm_fast.run_layer = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
      runners[label] = build_option(options, resets, x, y)
    finally:
      lstm_fast.run_layer = original
    paths[label] = 'fast' if calls else 'reference'
    log(f'  built {label} ({paths[label]} path)')
  runners['canonical, reference path'] = build_option({}, False, x, y, reference=True)
  paths['canonical, reference path'] = 'reference'
  times, inner = time_interleaved(runners, reps, 0.6)
  base = statistics.median(times['canonical'])
  rows = []
  for label in runners:
    med = statistics.median(times[label])
    rows.append(dict(option=label, path=paths[label], cpu=cpu, median_ms=med * 1e3,
                     min_ms=min(times[label]) * 1e3, ratio_to_canonical=med / base,
                     times_ms=[t * 1e3 for t in times[label]]))
    log(f'  {label:50s} {paths[label]:9s} median {med * 1e3:7.1f} ms  x{med / base:.2f}')
  return dict(steps=steps, inner_steps=inner, repetitions=reps, rows=rows)


def options_markdown(result):
  info = result['machine']
  lines = [
      f'### Cell options in the training step: {info["cpu"]}, {info["cores"]} cores',
      '',
      f'jax {info["jax"]}, flax {info["flax"]}; 1-minute load average {info["loadavg"][0]:.2f} at '
      f'start; {info["date"]}, commit {info["commit"]}.',
      f'The speed part\'s training step at 2 layers (batch {BATCH}, input {F_IN}, hidden {HIDDEN}, '
      f'T={result["steps"]}, float32, Adam), in training mode (deterministic=False), with one '
      'option each; all interleaved in one process. "path": where `lstm.fast.supports` sent the '
      'layers. "vs canonical": median / the canonical step\'s median.',
      f'Command: `{result["command"]}`',
      '',
      '| option | path | median ms | min ms | vs canonical |',
      '|---|---|---:|---:|---:|',
  ]
  for r in result['rows']:
    lines.append(f'| {r["option"]} | {r["path"]} | {r["median_ms"]:.1f} | {r["min_ms"]:.1f} | '
                 f'{r["ratio_to_canonical"]:.2f}x |')
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------------------------
# Compile-time and memory part


def _train_lowering(model, x, y):
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype))
  tx = optax.adam(LR)
  opt_state = jax.eval_shape(tx.init, params)

  def step(p, s, x, y):
    loss, g = jax.value_and_grad(lambda p: _xent(model.apply(p, x), y))(p)
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  t0 = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x, y)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return compiled, t1 - t0, t2 - t1


def compile_part(quick, log, cpu=None):
  depths = (2, 4) if quick else (2, 4, 8, 16, 32)
  steps = 16 if quick else STEPS
  x = jax.ShapeDtypeStruct((BATCH, steps, F_IN), jnp.float32)
  y = jax.ShapeDtypeStruct((BATCH, steps), jnp.int32)
  compile_rows = []
  for scan in (False, True):
    for depth in depths:
      _, lower_s, compile_s = _train_lowering(ProjectNet(depth, HIDDEN, scan_layers=scan), x, y)
      compile_rows.append(dict(cpu=cpu, layers=depth, scan_layers=scan, lower_s=lower_s,
                               compile_s=compile_s, total_s=lower_s + compile_s))
      log(f'  layers {depth:2d} scan_layers={scan!s:5s}: lower {lower_s:6.2f} s, '
          f'compile {compile_s:6.2f} s')
  mem_steps = 256 if quick else 4096
  x = jax.ShapeDtypeStruct((BATCH, mem_steps, F_IN), jnp.float32)
  y = jax.ShapeDtypeStruct((BATCH, mem_steps), jnp.int32)
  memory_rows = []
  paths = [('fast', contextlib.nullcontext)]
  if lstm_fast is not None:
    paths.append(('reference', _reference_context))
  for path, context in paths:
    for remat in (False, True):
      with context():
        compiled, _, _ = _train_lowering(ProjectNet(2, HIDDEN, remat=remat), x, y)
      m = compiled.memory_analysis()
      memory_rows.append(dict(cpu=cpu, path=path, layers=2, steps=mem_steps, remat=remat,
                              temp_mib=m.temp_size_in_bytes / 2 ** 20,
                              argument_mib=m.argument_size_in_bytes / 2 ** 20,
                              output_mib=m.output_size_in_bytes / 2 ** 20))
      log(f'  T={mem_steps} path={path} remat={remat!s:5s}: temp '
          f'{memory_rows[-1]["temp_mib"]:.1f} MiB')
  return dict(compile=compile_rows, memory=memory_rows, compile_steps=steps,
              memory_steps=mem_steps)


# ----------------------------------------------------------------------------------------------
# Reporting


def cpu_slug(model):
  """A folder name for a CPU kind: 'AMD EPYC' -> 'amd-epyc', 'Intel(R) Xeon(R) Platinum 8480C
  CPU @ 2.00GHz' -> 'intel-xeon-platinum-8480c' (marks, 'CPU', clock and core counts dropped)."""
  s = re.sub(r'\((r|tm|c)\)|®|™', ' ', model, flags=re.I)
  s = re.sub(r'@.*$', ' ', s)
  s = re.sub(r'\b(cpu|processor|\d+-core)\b', ' ', s, flags=re.I)
  s = re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')
  return s or 'unknown-cpu'


def default_out(quick):
  """bench/results/<cpu-slug>/, or a temporary folder for --quick (smoke runs are no results)."""
  if quick:
    return tempfile.mkdtemp(prefix='bench_quick_')
  return os.path.join(ROOT, 'bench', 'results', cpu_slug(cpu_model()))


def machine_info():
  import torch
  model = cpu_model()
  try:
    commit = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                            capture_output=True, text=True).stdout.strip()
  except OSError:
    commit = ''
  import flax
  info = dict(cpu=model, cpu_slug=cpu_slug(model), cores=os.cpu_count(), python=platform.python_version(),
              jax=jax.__version__, flax=flax.__version__, torch=torch.__version__,
              torch_threads=torch.get_num_threads(),
              malloc_env={k: v for k, v in os.environ.items() if k.startswith('MALLOC_')},
              loadavg=os.getloadavg(), commit=commit,
              date=datetime.datetime.now().isoformat(timespec='seconds'))
  try:
    import keras
    info['keras'] = keras.__version__
  except Exception:  # noqa: BLE001
    pass
  return info


def speed_markdown(result):
  info, peak = result['machine'], result['peak_gflops']
  malloc = memory_text(info)
  lines = [
      f'### Step time: {info["cpu"]}, {info["cores"]} cores',
      '',
      f'jax {info["jax"]}, flax {info["flax"]}, torch {info["torch"]} '
      f'({info["torch_threads"]} threads, {malloc}), keras {info.get("keras", "-")}; '
      f'fp32 matmul peak measured with jnp.dot: {peak:.0f} GFLOP/s (best of '
      f'{len(result["peak_gflops_runs"])} measurements); 1-minute load average (a shared '
      f'machine) {info["loadavg"][0]:.2f} at start, {info.get("loadavg_end", [0])[0]:.2f} at the '
      f'end; {info["date"]}, commit {info["commit"]}.',
      f'Batch {BATCH}, input {F_IN}, hidden {HIDDEN}, head to {CLASSES} classes, float32, Adam. '
      'Median and min over interleaved repetitions; "vs PyTorch" = median / PyTorch median, '
      '"(min)" = min / PyTorch min (less sensitive to other load on the machine); tokens/s and '
      '% of peak from the median, counting matmul FLOPs only. project-ref = this project forced '
      'onto its reference lax.scan path; pytorch-1t = PyTorch with torch.set_num_threads(1) '
      '(its default 2 OpenMP threads degrade sharply when another process takes a core).',
      f'Command: `{result["command"]}`',
      '',
      '| case | implementation | median ms | min ms | tokens/s | vs PyTorch | (min) '
      '| % of peak |',
      '|---|---|---:|---:|---:|---:|---:|---:|',
  ]
  fmt = lambda v: '-' if v is None else f'{v:.2f}x'
  for c in result['cases']:
    for r in c['rows']:
      lines.append(f'| {c["case"]["name"]} | {r["impl"]} | '
                   f'{r["median_ms"]:.1f} | {r["min_ms"]:.1f} | {r["tokens_per_s"]:,.0f} | '
                   f'{fmt(r["ratio_to_pytorch"])} | {fmt(r.get("ratio_to_pytorch_min"))} | '
                   f'{100 * r["peak_fraction"]:.0f}% |')
  return '\n'.join(lines) + '\n'


def compile_markdown(result):
  info = result['machine']
  lines = [
      f'### Compile time and memory: {info["cpu"]}, {info["cores"]} cores',
      '',
      f'jax {info["jax"]}, flax {info["flax"]}; {info["date"]}, commit {info["commit"]}. '
      f'Training step (Adam), hidden {HIDDEN}, batch {BATCH}, T={result["compile_steps"]}.',
      f'Command: `{result["command"]}`',
      '',
      '| layers | scan_layers | trace+lower s | compile s | total s |',
      '|---:|---|---:|---:|---:|',
  ]
  for r in result['compile']:
    lines.append(f'| {r["layers"]} | {r["scan_layers"]} | {r["lower_s"]:.2f} | '
                 f'{r["compile_s"]:.2f} | {r["total_s"]:.2f} |')
  by = {(r['layers'], r['scan_layers']): r['total_s'] for r in result['compile']}
  depths = sorted({r['layers'] for r in result['compile']})
  if (depths[-1], True) in by and (depths[0], True) in by:
    lines += ['', f'scan_layers: {depths[-1]} layers / {depths[0]} layers = '
              f'{by[(depths[-1], True)] / by[(depths[0], True)]:.2f}x; without scan_layers: '
              f'{by[(depths[-1], False)] / by[(depths[0], False)]:.2f}x.']
  lines += ['', f'Temp memory XLA plans for one training step, 2 layers, T={result["memory_steps"]} '
            '(`compiled.memory_analysis().temp_size_in_bytes`):', '',
            '| path | remat | temp MiB | arguments MiB |', '|---|---|---:|---:|']
  for r in result['memory']:
    lines.append(f'| {r["path"]} | {r["remat"]} | {r["temp_mib"]:.0f} | {r["argument_mib"]:.1f} |')
  return '\n'.join(lines) + '\n'


def memory_text(info) -> str:
  """How the process's malloc was set, in words."""
  if info.get('memory', 'release') == 'keep':
    text = ('malloc keeping freed memory for every implementation (`lstm.memory.keep_freed_memory()`,'
            ' as the trainer runs)')
  else:
    text = "glibc's default malloc (freed memory returned to the system: page faults every step)"
  if info.get('malloc_env'):
    text += f', malloc env {info["malloc_env"]}'
  return text


def write_part(out: str, part: str, result: dict, markdown: str, log) -> None:
  """Writes `<out>/bench_<part>.json` and `.md` (`bench_<part>_release.*` with `--memory
  release`), and logs the Markdown."""
  if result.get('machine', {}).get('memory') == 'release':
    part += '_release'
  with open(os.path.join(out, f'bench_{part}.json'), 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, f'bench_{part}.md'), 'w') as f:
    f.write(markdown)
  log(markdown)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default=None,
                      help='output folder (default bench/results/<cpu-slug>/; a temporary '
                           'folder with --quick)')
  parser.add_argument('--part', choices=('speed', 'compile', 'options', 'bf16', 'loop', 'all'),
                      default='all')
  parser.add_argument('--quick', action='store_true', help='tiny smoke run')
  parser.add_argument('--reps', type=int, default=None, help='repetitions per case')
  parser.add_argument('--impls', default='project,project-ref,pytorch,pytorch-1t,flax,keras')
  parser.add_argument('--cases', default=None, help='comma-separated case indices to run')
  parser.add_argument('--memory', choices=('keep', 'release'), default='keep',
                      help='keep: lstm.memory.keep_freed_memory() for the whole process, so for '
                      "every implementation (what the trainer does); release: glibc's defaults")
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = default_out(args.quick)
  os.makedirs(args.out, exist_ok=True)
  command = ' '.join(['python bench/bench_lstm.py', *(argv if argv is not None else sys.argv[1:])])
  log = lambda s: print(s, flush=True)
  if args.memory == 'keep':
    from lstm import memory
    memory.keep_freed_memory()
  info = machine_info()
  info['memory'] = args.memory
  log(json.dumps(info))
  log(f'writing to {args.out}')
  impls = [i for i in args.impls.split(',') if i]
  if lstm_fast is None and 'project-ref' in impls:
    impls.remove('project-ref')

  if args.part in ('speed', 'all'):
    peak = measure_peak(1024 if args.quick else 2048)
    log(f'fp32 matmul peak: {peak:.1f} GFLOP/s')
    reps = args.reps or (2 if args.quick else 7)
    cases = speed_cases(args.quick)
    if args.cases:
      cases = [cases[int(i)] for i in args.cases.split(',')]
    results, peaks = [], [peak]
    for case in cases:
      log(f'case: {case["name"]}')
      c_reps = reps if case['steps'] <= 128 else max(3, reps // 2)
      results.append(run_case(case, impls, c_reps, peak, log, cpu=info['cpu']))
      peaks.append(measure_peak(1024 if args.quick else 2048))
      log(f'fp32 matmul peak: {peaks[-1]:.1f} GFLOP/s')
    peak = max(peaks)
    for c in results:  # fractions against the best peak seen
      for r in c['rows']:
        r['peak_fraction'] = c['gflop'] * 1e9 / (r['median_ms'] * 1e-3) / (peak * 1e9)
    info['loadavg_end'] = os.getloadavg()
    result = dict(machine=info, peak_gflops=peak, peak_gflops_runs=peaks,
                  command=command, cases=results)
    write_part(args.out, 'speed', result, speed_markdown(result), log)

  if args.part in ('compile', 'all'):
    result = dict(machine=info, command=command, **compile_part(args.quick, log, info['cpu']))
    write_part(args.out, 'compile', result, compile_markdown(result), log)

  if args.part in ('options', 'all'):
    result = dict(machine=info, command=command,
                  **options_part(args.quick, log, args.reps or (2 if args.quick else 7),
                                 info['cpu']))
    write_part(args.out, 'options', result, options_markdown(result), log)

  if args.part in ('bf16', 'all'):
    result = dict(machine=info, command=command,
                  **bf16_part(args.quick, log, args.reps or (2 if args.quick else 7), info['cpu']))
    write_part(args.out, 'bf16', result, bf16_markdown(result), log)

  if args.part in ('loop', 'all'):
    result = dict(machine=info, command=command,
                  **loop_part(args.quick, log, args.reps or (2 if args.quick else 10), info['cpu']))
    write_part(args.out, 'loop', result, loop_markdown(result), log)


if __name__ == '__main__':
  main()
