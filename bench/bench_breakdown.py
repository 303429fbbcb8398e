"""Where the training step's time goes, against the matmul peak: run by hand on an idle machine.

    python bench/bench_breakdown.py                 # 2-layer training and forward-only cases
    python bench/bench_breakdown.py --dtype bfloat16  # the same in bfloat16 compute
    python bench/bench_breakdown.py --quick --out /tmp/bench   # smoke run, seconds

Times bench/bench_lstm.py's 2-layer cases (input 128, hidden 256, batch 32, T=128, float32, a
head to 128 classes, Adam) whole and in parts, each part compiled alone on the step's shapes and
all of them interleaved in one process:
  forward loops     the CPU kernel's forward call of each layer (`lstm.native.forward`);
  backward loops    its backward call of each layer (`lstm.native.backward`: dz and dh0, dc0);
  gradient matmuls  what lstm/fast.py forms from dz after each backward loop: x^T dz, h^T dz, the
                    bias sum and, above the first layer, dz kernel^T (dx);
  head and loss     the output layer and the cross entropy, forward and backward;
  Adam              the optimizer's update of every parameter;
  the rest          the step's time less the parts': layout changes, copies, what the parts do
                    not overlap or fuse as the whole step does.
Each part's matmul FLOPs (bench_lstm.lstm_flops counts the same) give its fraction of the fp32
matmul peak and its time at the peak; "above the peak" is a part's time less that, the time the
step would save if the part ran at the peak; its share of the step's total above the peak says
which part to attack first. Then the second layer's gradient matmuls one at a time, as the
library forms them, beside a bare dot of the same size on an operand already transposed. Writes `bench_breakdown.{json,md}` to the folder bench_lstm.py writes
to (`bench/results/<cpu-slug>/`; a temporary folder with --quick); with `--dtype bfloat16`,
`StackedLSTM(dtype=bfloat16)` (the kernel's bfloat16 calls where the CPU has AVX512-BF16) against
the peak of a bfloat16 dot accumulating in float32, into `bench_breakdown_bf16.{json,md}`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lstm as bench  # noqa: E402  (also puts the project on the path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lstm import fast, native  # noqa: E402

PARTS = ('forward loops', 'backward loops', 'gradient matmuls', 'head and loss', 'Adam')


class FnRunner:
  """`run(n)`: n calls of a jitted function on fixed arguments, then one wait (as JaxRunner)."""

  def __init__(self, fns):
    self.fns = fns  # [(jitted function, args)], run in order each call
    self.run(1)

  def run(self, n):
    out = None
    for _ in range(n):
      for fn, args in self.fns:
        out = fn(*args)
    jax.block_until_ready(out)
    return out


def _array(rng, shape, scale=0.1, dtype=jnp.float32):
  return jnp.asarray((rng.standard_normal(shape) * scale).astype(np.float32), dtype)


def part_runners(case, x, y, step_runner, dtype=jnp.float32):
  """{part: FnRunner} for a case's layers, on its shapes, the layers' arrays in `dtype` (the
  parameters, which Adam updates, float32); `step_runner` supplies the parameters."""
  hidden, batch = bench.case_size(case)
  steps, layers, train = case['steps'], case['layers'], case['train']
  rng = np.random.default_rng(0)
  array = lambda shape, scale=0.1: _array(rng, shape, scale, dtype)
  widths = [bench.F_IN] + [hidden] * (layers - 1)
  fwd = jax.jit(lambda *a: native.forward(*a, None, keep_gates=train))
  bwd = jax.jit(lambda *a: native.backward(*a, None))

  def grads(x_l, kernel, w, hs, h0, dz, with_dx):
    out = [fast._matmul_tn(x_l, dz, kernel.dtype), *fast._weight_grads(w, hs, h0, dz, None, None)]
    if with_dx:
      out.append(jnp.dot(dz, kernel.T, preferred_element_type=jnp.float32).astype(x_l.dtype))
    return out

  forwards, backwards, matmuls = [], [], []
  for layer, f in enumerate(widths):
    x_l = array((steps, batch, f), 1.0)
    kernel, w = array((f, 4 * hidden)), array((hidden, 4 * hidden))
    b, h0, c0 = (array(s) for s in ((4 * hidden,), (batch, hidden), (batch, hidden)))
    forwards.append((fwd, (x_l, kernel, w, b, h0, c0)))
    if train:
      gates, hs, cs = fwd(x_l, kernel, w, b, h0, c0)
      dy = array((steps, batch, hidden))
      backwards.append((bwd, (gates, cs, c0, w, dy, h0, c0)))
      dz = array((steps, batch, 4 * hidden))
      matmuls.append((jax.jit(grads, static_argnums=6), (x_l, kernel, w, hs, h0, dz, layer > 0)))
  head_w, head_b = _array(rng, (hidden, bench.CLASSES)), _array(rng, (bench.CLASSES,))
  top = array((batch, steps, hidden), 1.0)
  labels = jnp.asarray(y)
  loss = lambda p, h: bench._xent(h @ p[0] + p[1], labels)
  head = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)) if train else loss)
  runners = {'forward loops': FnRunner(forwards), 'head and loss': FnRunner(
      [(head, ((head_w, head_b), top))])}
  if train:
    tx = optax.adam(bench.LR)
    params = jax.tree.map(jnp.copy, step_runner.params)  # the step donates its own
    opt_state = tx.init(params)
    grads_tree = jax.tree.map(jnp.ones_like, params)
    adam = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
    runners.update({'backward loops': FnRunner(backwards),
                    'gradient matmuls': FnRunner(matmuls),
                    'Adam': FnRunner([(adam, (grads_tree, opt_state, params))])})
  return runners


def part_flops(case):
  """Matmul FLOPs of each part (their sum is bench_lstm.case_flops)."""
  hidden, batch = bench.case_size(case)
  n = 2 * batch * case['steps']
  widths = [bench.F_IN] + [hidden] * (case['layers'] - 1)
  four = 4 * hidden
  flops = {'forward loops': sum(n * (f + hidden) * four for f in widths),
           'head and loss': n * hidden * bench.CLASSES * (3 if case['train'] else 1)}
  if case['train']:
    flops.update({'backward loops': len(widths) * n * four * hidden,
                  'gradient matmuls': sum(n * four * (f + hidden) for f in widths)
                  + sum(n * four * f for f in widths[1:]),
                  'Adam': 0})
  return flops


def matmul_runners(case, dtype=jnp.float32):
  """The second layer's gradient matmuls one at a time, as lstm/fast.py forms them and as bare
  dots on operands already in the layout the dot wants: {name: (FnRunner, FLOPs)}."""
  hidden, batch = bench.case_size(case)
  steps, four = case['steps'], 4 * hidden
  rng = np.random.default_rng(1)
  array = lambda shape, scale=0.1: _array(rng, shape, scale, dtype)
  x, hs = array((steps, batch, hidden), 1.0), array((steps, batch, hidden), 1.0)
  h0, dz = array((batch, hidden)), array((steps, batch, four))
  kernel, w = array((hidden, four)), array((hidden, four))
  x_t = jnp.asarray(np.asarray(x.astype(jnp.float32)).reshape(-1, hidden).T, dtype)
  dz_2d = dz.reshape(-1, four)
  n = 2 * steps * batch * hidden * four
  fns = {
      'x^T dz (input kernel)': (lambda a, b: fast._matmul_tn(a, b, dtype), (x, dz)),
      'h_prev^T dz and the bias sum (recurrent kernel)':
          (lambda *a: fast._weight_grads(*a, None, None), (w, hs, h0, dz)),
      'dz kernel^T (dx)': (lambda a, k: jnp.dot(a, k.T, preferred_element_type=jnp.float32)
                           .astype(dtype), (dz, kernel)),
      'a bare dot of the same size, the left operand already transposed':
          (lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32), (x_t, dz_2d)),
  }
  return {name: (FnRunner([(jax.jit(f), args)]), n) for name, (f, args) in fns.items()}


def run_case(case, reps, log, dtype=jnp.float32):
  """The step's and each part's median times over `reps` interleaved repetitions (the figures
  against the peak are added by `with_peak`)."""
  hidden, batch = bench.case_size(case)
  x, y = bench.make_data(batch, case['steps'])
  step = bench.build_project(case, x, y, dtype=None if dtype == jnp.float32 else dtype)
  runners = {'step': step, **part_runners(case, x, y, step, dtype)}
  times, inner = bench.time_interleaved(runners, reps, 0.6)
  median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
  flops = part_flops(case)
  assert sum(flops.values()) == bench.case_flops(case)
  rows = [dict(part=name, ms=median[name], gflop=flops[name] / 1e9,
               times_ms=[t * 1e3 for t in times[name]]) for name in PARTS if name in flops]
  rows.append(dict(part='the rest', ms=median['step'] - sum(r['ms'] for r in rows), gflop=0.0,
                   times_ms=None))
  for r in rows:
    log(f'  {r["part"]:18s} {r["ms"]:8.2f} ms')
  return dict(case=case, inner_steps=inner, repetitions=reps, step_ms=median['step'],
              step_times_ms=[t * 1e3 for t in times['step']], gflop=sum(flops.values()) / 1e9,
              rows=rows)


def with_peak(c, peak):
  """A case's figures against `peak` GFLOP/s: each part's fraction of it, its time at it, the time
  above it and that time's share of the step's."""
  above = c['step_ms'] - c['gflop'] / peak * 1e3
  rows = []
  for r in c['rows']:
    at_peak = r['gflop'] / peak * 1e3
    rows.append({**r, 'at_peak_ms': at_peak, 'above_peak_ms': r['ms'] - at_peak,
                 'peak_fraction': r['gflop'] / r['ms'] / peak * 1e3 if r['gflop'] and r['ms'] > 0
                 else None,
                 'share_of_above': (r['ms'] - at_peak) / above})
  return {**c, 'rows': rows, 'above_peak_ms': above,
          'step_peak_fraction': c['gflop'] / c['step_ms'] / peak * 1e3}


def markdown(result):
  info, peak = result['machine'], result['peak_gflops']
  bf16 = result.get('dtype') == 'bfloat16'
  compute = ('bfloat16 compute (`StackedLSTM(dtype=bfloat16)`, float32 parameters), '
             + ("the kernel's bfloat16 calls" if result.get('bf16_kernel') else
                'the XLA loops (no AVX512-BF16 here)') if bf16 else 'float32, the CPU kernel on')
  lines = [
      f'### Where the step\'s time goes{" in bfloat16" if bf16 else ""}: {info["cpu"]}, '
      f'{info["cores"]} cores', '',
      f'jax {info["jax"]}; {bench.memory_text(info)}; '
      + ('bfloat16 matmul peak (float32 accumulation)' if bf16 else 'fp32 matmul peak')
      + ' measured with jnp.dot: '
      f'{peak:.0f} GFLOP/s (best of {len(result["peak_gflops_runs"])}); 1-minute load average '
      f'{info["loadavg"][0]:.2f} at start, {info["loadavg_end"][0]:.2f} at the end; '
      f'{info["date"]}, commit {info["commit"]}.',
      f'Batch {bench.BATCH}, input {bench.F_IN}, hidden {bench.HIDDEN}, T={bench.STEPS}, head to '
      f'{bench.CLASSES} classes, Adam, {compute}. Medians over interleaved '
      'repetitions; each part compiled alone on the step\'s shapes; "the rest" is the step less '
      'the parts. "above the peak" = the time less the part\'s matmul FLOPs at the peak.',
      f'Command: `{result["command"]}`', '']
  for c in result['cases']:
    lines += [f'**{c["case"]["name"]}**: step {c["step_ms"]:.1f} ms, '
              f'{100 * c["step_peak_fraction"]:.0f}% of the peak, {c["above_peak_ms"]:.1f} ms '
              'above it.', '',
              '| part | ms | GFLOP | % of peak | ms at the peak | ms above the peak '
              '| share of the step\'s ms above the peak |',
              '|---|---:|---:|---:|---:|---:|---:|']
    for r in c['rows']:
      frac = '-' if r['peak_fraction'] is None else f'{100 * r["peak_fraction"]:.0f}%'
      lines.append(f'| {r["part"]} | {r["ms"]:.2f} | {r["gflop"]:.2f} | {frac} | '
                   f'{r["at_peak_ms"]:.2f} | {r["above_peak_ms"]:.2f} | '
                   f'{100 * r["share_of_above"]:.0f}% |')
    lines.append('')
  lines += ['The second layer\'s gradient matmuls of the training case one at a time (each '
            f'{result["matmuls"][0]["gflop"]:.2f} GFLOP), and a bare dot of the same size whose '
            'left operand is already transposed:', '',
            '| matmul | ms | % of peak |', '|---|---:|---:|']
  for r in result['matmuls']:
    lines.append(f'| {r["name"]} | {r["ms"]:.2f} | {100 * r["peak_fraction"]:.0f}% |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default=None, help='output folder (default '
                      'bench/results/<cpu-slug>/; a temporary folder with --quick)')
  parser.add_argument('--quick', action='store_true', help='tiny smoke run')
  parser.add_argument('--reps', type=int, default=None, help='repetitions per case')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                      help="the layers' compute dtype (StackedLSTM's dtype)")
  args = parser.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  if not native.available():
    sys.exit('bench_breakdown: the CPU kernel is not available here (lstm.native.available()); '
             'this benchmark times its parts')
  out = args.out or bench.default_out(args.quick)
  os.makedirs(out, exist_ok=True)
  log = lambda s: print(s, flush=True)
  from lstm import memory
  memory.keep_freed_memory()
  info = bench.machine_info()
  info['memory'] = 'keep'
  reps = args.reps or (2 if args.quick else 9)
  cases = [c for c in bench.speed_cases(args.quick) if c['layers'] == 2
           and not c.get('bidirectional')][:2]
  size = 1024 if args.quick else 2048
  peaks = [bench.measure_peak(size, dtype=dtype)]
  results = []
  for case in cases:
    log(f'case: {case["name"]}')
    results.append(run_case(case, reps, log, dtype))
    peaks.append(bench.measure_peak(size, dtype=dtype))
  peak = max(peaks)  # the best seen, as bench_lstm.py: other load only lowers it
  results = [with_peak(c, peak) for c in results]
  log('the gradient matmuls one at a time')
  mm = matmul_runners(cases[0], dtype)
  times, _ = bench.time_interleaved({k: r for k, (r, _) in mm.items()}, reps, 0.3)
  matmuls = [dict(name=k, ms=statistics.median(times[k]) * 1e3, gflop=f / 1e9,
                  peak_fraction=f / statistics.median(times[k]) / (peak * 1e9))
             for k, (_, f) in mm.items()]
  info['loadavg_end'] = os.getloadavg()
  command = ' '.join(['python bench/bench_breakdown.py',
                      *(argv if argv is not None else sys.argv[1:])])
  result = dict(machine=info, peak_gflops=peak, peak_gflops_runs=peaks, command=command,
                cases=results, matmuls=matmuls, dtype=args.dtype,
                bf16_kernel=dtype == jnp.bfloat16 and native.bf16_available())
  bench.write_part(out, 'breakdown' if dtype == jnp.float32 else 'breakdown_bf16', result,
                   markdown(result), log)


if __name__ == '__main__':
  main()
