"""GPU check, benchmark part: this project's StackedLSTM against cuDNN, side by side in one process.

Run by bench/gpu_check.sh (which first runs the fast-path equivalence tests on the device and
passes their results here), or alone:

    python3 bench/bench_gpu.py --out /tmp/gpu            # on a CUDA machine
    JAX_PLATFORMS=cpu python3 bench/bench_gpu.py --out /tmp/gpu   # CPU form: tiny, seconds

It needs only jax, flax, optax, numpy and torch (it imports bench_lstm.py's builders, the timing
loop and the machine record, and nothing from train/). Implementations, interleaved:
  project      `StackedLSTM` on the path it dispatches to (lstm/fast.py);
  project-ref  the same model inside `lstm.fast.reference_path()` (plain `lax.scan`);
  flax         `flax.linen.RNN(OptimizedLSTMCell)` layers;
  pytorch      `torch.nn.LSTM` on CUDA (cuDNN's LSTM kernels), eager, default Adam;
  jax-cudnn    `jax.experimental.rnn.lstm`: cuDNN through JAX (CUDA only, float32 only,
               batch-first, one flat weight vector, no bfloat16, no peepholes/projection).
Every one has the same linear head to 128 classes, cross-entropy on every step and Adam; "train" is
one step (forward + backward + update), "forward" the loss alone. Timing: each repetition runs
`inner` steps back to back and waits once (device time, not host round trips), the order rotating
every repetition; median and min over repetitions. Matmul precision is set per case for both
frameworks: `tf32` (JAX `jax_default_matmul_precision='tensorfloat32'`, torch matmul and cuDNN RNN
`fp32_precision='tf32'`: what each does for an fp32 LSTM out of the box on Hopper, cuDNN RNN
included) or `fp32` (`'float32'` / `'ieee'`).

Before the timings, a cross-check on one set of weights (fp32 everywhere): torch's module,
converted with `lstm.interop.from_torch` for the project and packed into cuDNN's flat layout for
`jax.experimental.rnn`, must give the same outputs and input gradients in all of them (relative
error under 1e-4), `jax.experimental.rnn.lstm_ref` (its lax.scan reference, any backend) checking
the packing on the CPU too.

Without a GPU (JAX backend cpu) it runs tiny sizes, skips what needs CUDA (jax-cudnn, torch on
cuda: PyTorch runs on the CPU instead) and says so. Writes `<out>/gpu_check.json` and
`<out>/gpu_check.md` after every case (a run cut short keeps what it measured). Exit status 0 when
the equivalence tests (if given) and the cross-check pass and every implementation ran; 1 when a
test or check failed; 2 when an implementation raised.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET

# JAX and PyTorch share one GPU: JAX takes half of its memory up front, not 75%.
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.5')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_lstm as bl  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lstm import fast, interop  # noqa: E402

IMPLS = ('project', 'project-ref', 'flax', 'pytorch', 'jax-cudnn')
CHECK_TOL = 1e-4


def gpu_cases():
  """The device cases, most informative first (a time budget may cut the tail)."""
  c = lambda train, layers, hidden, batch, steps, precision='tf32': dict(
      name=f'{"train" if train else "forward"}, {layers} layers, H={hidden}, B={batch}, '
           f'T={steps}', train=train, layers=layers, hidden=hidden, batch=batch, steps=steps,
      precision=precision)
  return [
      c(True, 2, 256, 32, 128),     # the CPU benchmark's case
      c(False, 2, 256, 32, 128),
      c(True, 4, 256, 32, 128),
      c(True, 2, 1024, 256, 128),
      c(False, 2, 1024, 256, 128),
      c(True, 2, 256, 256, 512),
      c(True, 4, 1024, 256, 512),
      c(False, 4, 1024, 256, 512),
      c(True, 2, 1024, 32, 512),
      c(True, 2, 256, 32, 128, 'fp32'),
      c(True, 2, 1024, 256, 128, 'fp32'),
  ]


def tiny_cases():
  """The CPU form: the same code paths, sizes that take seconds."""
  return [dict(name='train, 2 layers, H=16, B=4, T=8', train=True, layers=2, hidden=16, batch=4,
               steps=8, precision='fp32'),
          dict(name='forward, 2 layers, H=16, B=4, T=8', train=False, layers=2, hidden=16,
               batch=4, steps=8, precision='fp32')]


# ----------------------------------------------------------------------------------------------
# Precision and machine


def set_precision(precision):
  """Both frameworks' float32 matmul mode: 'tf32' or 'fp32'. Returns what torch reports."""
  import torch
  jax.config.update('jax_default_matmul_precision',
                    'tensorfloat32' if precision == 'tf32' else 'float32')
  mode = 'tf32' if precision == 'tf32' else 'ieee'
  cudnn = torch.backends.cudnn
  if hasattr(torch.backends.cuda.matmul, 'fp32_precision') and hasattr(cudnn, 'rnn'):
    # torch >= 2.9: the per-backend API; never mixed with the legacy flags (torch refuses that).
    torch.backends.cuda.matmul.fp32_precision = mode
    cudnn.rnn.fp32_precision = mode
    return dict(matmul=torch.backends.cuda.matmul.fp32_precision, cudnn_rnn=cudnn.rnn.fp32_precision)
  torch.backends.cuda.matmul.allow_tf32 = precision == 'tf32'
  cudnn.allow_tf32 = precision == 'tf32'
  return dict(matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
              cudnn_allow_tf32=cudnn.allow_tf32)


def _version(dist):
  try:
    from importlib import metadata
    return metadata.version(dist)
  except Exception:  # noqa: BLE001
    return None


def device_info(on_gpu):
  import torch
  info = bl.machine_info()
  dev = jax.devices()[0]
  info.update(
      jax_backend=jax.default_backend(), jax_device=getattr(dev, 'device_kind', str(dev)),
      jax_device_count=jax.device_count(), jaxlib=_version('jaxlib'),
      jax_cuda_plugin=next((f'{d} {v}' for d in ('jax-cuda13-plugin', 'jax-cuda12-plugin')
                            if (v := _version(d))), None),
      torch_cuda=torch.version.cuda, torch_cuda_available=torch.cuda.is_available())
  if torch.cuda.is_available():
    info['torch_device'] = torch.cuda.get_device_name(0)
    info['cudnn'] = torch.backends.cudnn.version()
  if on_gpu:
    try:
      smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,'
                            'clocks.max.sm,power.limit', '--format=csv,noheader'],
                           capture_output=True, text=True, timeout=30).stdout.strip()
      info['nvidia_smi'] = smi
    except (OSError, subprocess.SubprocessError):
      pass
  return info


# ----------------------------------------------------------------------------------------------
# jax.experimental.rnn (cuDNN through JAX)


def torch_to_cudnn_flat(module):
  """A `torch.nn.LSTM`'s weights in `jax.experimental.rnn`'s flat layout: every layer's W_ih and
  W_hh (gate order i, f, g, o, as cuDNN's), then every layer's b_ih and b_hh."""
  get = lambda name: getattr(module, name).detach().cpu().numpy().reshape(-1)
  layers = range(module.num_layers)
  parts = [get(f'{kind}_l{k}') for k in layers for kind in ('weight_ih', 'weight_hh')]
  parts += [get(f'{kind}_l{k}') for k in layers for kind in ('bias_ih', 'bias_hh')]
  return np.concatenate(parts).astype(np.float32)


def cudnn_lstm_fn(layers, hidden, batch, steps):
  """(x, w) -> y of `jax.experimental.rnn.lstm` with zero initial carries and full lengths."""
  from jax.experimental import rnn
  zeros = jnp.zeros((layers, batch, hidden), jnp.float32)
  lengths = jnp.full((batch,), steps, jnp.int32)

  def f(x, w):
    y, _, _ = rnn.lstm(x, zeros, zeros, w, lengths, input_size=bl.F_IN, hidden_size=hidden,
                       num_layers=layers, dropout=0.0, bidirectional=False)
    return y
  return f


def build_jax_cudnn(case, x, y):
  from jax.experimental import rnn
  hidden, batch = bl.case_size(case)
  layers = case['layers']
  lstm = cudnn_lstm_fn(layers, hidden, batch, case['steps'])
  head = nn.Dense(bl.CLASSES)
  params = {'lstm': rnn.init_lstm_weight(jax.random.key(0), bl.F_IN, hidden, layers, False),
            'head': head.init(jax.random.key(1), jnp.zeros((1, hidden)))}
  apply = lambda p, x: head.apply(p['head'], lstm(x, p['lstm']))
  return bl.JaxRunner(apply, params, x, y, case['train'])


# ----------------------------------------------------------------------------------------------
# Cross-check: one set of weights, every implementation


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def cross_check(on_gpu, log):
  """Outputs and d(sum(y * r))/dx of each implementation against torch's, on torch's weights."""
  import torch
  from jax.experimental import rnn
  set_precision('fp32')
  layers, hidden, batch, steps = (2, 256, 32, 64) if on_gpu else (2, 16, 4, 8)
  device = 'cuda' if on_gpu and torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  module = torch.nn.LSTM(bl.F_IN, hidden, layers, batch_first=True).to(device)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, steps, bl.F_IN), dtype=np.float32)
  r = rng.standard_normal((batch, steps, hidden), dtype=np.float32)
  xt = torch.from_numpy(x).to(device).requires_grad_(True)
  yt, _ = module(xt)
  (yt * torch.from_numpy(r).to(device)).sum().backward()
  want_y, want_dx = yt.detach().cpu().numpy(), xt.grad.cpu().numpy()

  def with_grad(f):
    loss = lambda x: jnp.sum(f(x) * r)
    return jax.jit(f)(x), jax.jit(jax.grad(loss))(x)

  model, variables = interop.from_torch(module)
  got = {'project': lambda: with_grad(lambda x: model.apply(variables, x)[0])}

  def reference():
    with fast.reference_path():
      return with_grad(lambda x: model.apply(variables, x)[0])
  got['project-ref'] = reference
  flat = torch_to_cudnn_flat(module)
  if flat.size != rnn.get_num_params_in_lstm(bl.F_IN, hidden, layers, False):
    raise AssertionError(f'cuDNN flat weights: {flat.size} values, jax.experimental.rnn expects '
                         f'{rnn.get_num_params_in_lstm(bl.F_IN, hidden, layers, False)}')
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(jnp.asarray(flat), bl.F_IN, hidden, layers,
                                                   False)
  zeros = jnp.zeros((layers, batch, hidden), jnp.float32)
  lengths = jnp.full((batch,), steps, jnp.int32)
  got['lstm_ref'] = lambda: with_grad(lambda x: rnn.lstm_ref(
      x, zeros, zeros, w_ih, w_hh, b_ih, b_hh, lengths, bl.F_IN, hidden, layers, 0.0, False)[0])
  if on_gpu:
    cudnn = cudnn_lstm_fn(layers, hidden, batch, steps)
    got['jax-cudnn'] = lambda: with_grad(lambda x: cudnn(x, jnp.asarray(flat)))
  rows = []
  for name, fn in got.items():
    try:
      y, dx = fn()
      ey, edx = _rel(y, want_y), _rel(dx, want_dx)
      ok = ey < CHECK_TOL and edx < CHECK_TOL
      rows.append(dict(impl=name, y_rel_err=ey, dx_rel_err=edx, ok=ok))
      log(f'  {name:12s} y rel err {ey:.2e}  dx rel err {edx:.2e}  {"ok" if ok else "MISMATCH"}')
    except Exception as e:  # noqa: BLE001
      rows.append(dict(impl=name, ok=False, error=f'{type(e).__name__}: {e}'[:300]))
      log(f'  {name:12s} error: {rows[-1]["error"]}')
  if not on_gpu:
    rows.append(dict(impl='jax-cudnn', ok=None,
                     skipped='needs CUDA: jax.experimental.rnn.lstm lowers to cuDNN only'))
  return dict(layers=layers, hidden=hidden, batch=batch, steps=steps, torch_device=device,
              tolerance=CHECK_TOL, rows=rows)


# ----------------------------------------------------------------------------------------------
# Equivalence tests (run by gpu_check.sh; summarised here)


def test_summary(junit, log_path, rc, seconds, command):
  """Counts from pytest's summary line, failures from its JUnit XML."""
  s = dict(command=command, exit_status=rc, seconds=seconds, counts={}, failed=[])
  text = ''
  if log_path and os.path.exists(log_path):
    with open(log_path, errors='replace') as f:
      text = f.read()
  lines = [l for l in text.splitlines() if re.search(r'\d+ (passed|failed|error)', l)]
  if lines:
    for n, what in re.findall(r'(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed'
                              r'|warnings?)', lines[-1]):
      s['counts'][what.rstrip('s') if what.startswith(('error', 'warning')) else what] = int(n)
  if junit and os.path.exists(junit):
    try:
      for case in ET.parse(junit).getroot().iter('testcase'):
        if case.find('failure') is not None or case.find('error') is not None:
          s['failed'].append(f'{case.get("classname")}::{case.get("name")}')
    except ET.ParseError:
      pass
  s['interrupted'] = rc in (124, 130, 137) or 'Interrupted' in text or 'KeyboardInterrupt' in text
  s['ok'] = rc == 0 and not s['failed']
  return s


# ----------------------------------------------------------------------------------------------
# Speed


def builders(on_gpu):
  import torch
  cuda = on_gpu and torch.cuda.is_available()
  out = {
      'project': lambda c, x, y: bl.build_project(c, x, y),
      'project-ref': lambda c, x, y: bl.build_project(c, x, y, context=bl._reference_context),
      'flax': bl.build_flax,
      'pytorch': lambda c, x, y: bl.TorchRunner(c, x, y, device='cuda' if cuda else 'cpu'),
  }
  skipped = {}
  if on_gpu:
    out['jax-cudnn'] = build_jax_cudnn
  else:
    skipped['jax-cudnn'] = 'needs CUDA: jax.experimental.rnn.lstm lowers to cuDNN only'
  return out, skipped


def run_gpu_case(case, build, skipped, reps, budget, peak, log):
  hidden, batch = bl.case_size(case)
  x, y = bl.make_data(batch, case['steps'])
  runners, rows = {}, {}
  for name in IMPLS:
    if name in skipped:
      rows[name] = dict(impl=name, status=f'skipped: {skipped[name]}')
      continue
    t0 = time.perf_counter()
    try:
      runners[name] = build[name](case, x, y)
      log(f'  built {name} in {time.perf_counter() - t0:.1f} s')
    except Exception as e:  # noqa: BLE001
      rows[name] = dict(impl=name, status=f'error: {type(e).__name__}: {e}'[:400])
      log(f'  {name}: {rows[name]["status"]}')
      log(traceback.format_exc(limit=3))
  times, inner = bl.time_interleaved(runners, reps, budget) if runners else ({}, 0)
  flops = bl.case_flops(case)
  med = {n: statistics.median(t) for n, t in times.items()}
  for name, t in times.items():
    rows[name] = dict(
        impl=name, status='ok', median_ms=med[name] * 1e3, min_ms=min(t) * 1e3,
        tokens_per_s=batch * case['steps'] / med[name],
        ratio_to_pytorch=med[name] / med['pytorch'] if 'pytorch' in med else None,
        ratio_to_jax_cudnn=med[name] / med['jax-cudnn'] if 'jax-cudnn' in med else None,
        peak_fraction=flops / med[name] / (peak * 1e9) if peak else None,
        compile_s=runners[name].compile_s, times_ms=[v * 1e3 for v in t])
    r = rows[name]
    log(f'  {name:12s} median {r["median_ms"]:9.2f} ms  min {r["min_ms"]:9.2f} ms  '
        f'vs pytorch {r["ratio_to_pytorch"] or 0:.2f}x  vs jax-cudnn '
        f'{r["ratio_to_jax_cudnn"] or 0:.2f}x')
  del runners
  gc.collect()
  return dict(case=case, gflop=flops / 1e9, inner_steps=inner, repetitions=reps,
              rows=[rows[n] for n in IMPLS if n in rows])


# ----------------------------------------------------------------------------------------------
# Report


def markdown(result):
  info = result['machine']
  on_gpu = result['on_gpu']
  fmt = lambda v, d=2: '-' if v is None else f'{v:.{d}f}x'
  title = (f'GPU check: {info.get("jax_device")} ({info.get("nvidia_smi") or "nvidia-smi: -"})'
           if on_gpu else f'GPU check, CPU form (no GPU: JAX backend {info["jax_backend"]})')
  lines = [
      f'### {title}', '',
      f'Host CPU {info["cpu"]}, {info["cores"]} cores; python {info["python"]}, jax '
      f'{info["jax"]}, jaxlib {info.get("jaxlib")}, CUDA plugin {info.get("jax_cuda_plugin")}, '
      f'flax {info["flax"]}, torch {info["torch"]} (CUDA {info.get("torch_cuda")}, cuDNN '
      f'{info.get("cudnn", "-")}, torch device {info.get("torch_device", "cpu")}); '
      f'{info["date"]}, commit {info["commit"]}; this part took {result.get("seconds", 0):.0f} s.',
      f'Command: `{result["command"]}`', '']
  if result['skipped']:
    lines += ['Skipped here: ' + '; '.join(result['skipped']) + '.', '']
  t = result.get('tests')
  lines += ['#### Equivalence tests on this device', '']
  if t:
    counts = ', '.join(f'{n} {k}' for k, n in t['counts'].items()) or 'no summary line'
    lines += [f'`{t["command"]}`: **{"passed" if t["ok"] else "FAILED"}** ({counts}; exit '
              f'status {t["exit_status"]}, {t["seconds"]} s'
              f'{", interrupted by the time limit" if t["interrupted"] else ""}).']
    if t.get('note'):
      lines.append(t['note'])
    if t['failed']:
      lines += ['', 'Failed:'] + [f'- `{f}`' for f in t['failed'][:30]]
  else:
    lines.append('Not run (no --pytest-log given).')
  c = result.get('cross_check')
  lines += ['', f'#### Same weights in every implementation (fp32; against torch.nn.LSTM on '
            f'{c["torch_device"] if c else "-"})', '']
  if c:
    lines += [f'{c["layers"]} layers, hidden {c["hidden"]}, batch {c["batch"]}, T={c["steps"]}; '
              f'relative error ‖got − torch‖ / ‖torch‖ of the outputs y and of d(sum(y·r))/dx, '
              f'bar {c["tolerance"]:g}.', '',
              '| implementation | y rel. err | dx rel. err | result |', '|---|---:|---:|---|']
    for r in c['rows']:
      if 'skipped' in r:
        lines.append(f'| {r["impl"]} | - | - | skipped: {r["skipped"]} |')
      elif 'error' in r:
        lines.append(f'| {r["impl"]} | - | - | error: {r["error"][:120]} |')
      else:
        lines.append(f'| {r["impl"]} | {r["y_rel_err"]:.1e} | {r["dx_rel_err"]:.1e} | '
                     f'{"ok" if r["ok"] else "MISMATCH"} |')
  peaks = ', '.join(f'{p}: {v / 1e3:.1f} TFLOP/s' if on_gpu else f'{p}: {v:.0f} GFLOP/s'
                    for p, v in result['peak_gflops'].items())
  lines += ['', '#### Step time', '',
            f'Input {bl.F_IN}, head to {bl.CLASSES} classes, float32 parameters and data, Adam; '
            '"train" = forward + backward + update, "forward" = the loss only. Median and min over '
            f'{result["reps"]} interleaved repetitions of back-to-back steps; "vs PyTorch" and '
            '"vs jax-cudnn" = median / their median; % of peak counts matmul FLOPs only against '
            f'a large jnp.dot at the case\'s precision ({peaks}). Precision tf32 = both '
            'frameworks\' TF32 matmuls and cuDNN RNN (their default for fp32 LSTMs on Hopper); '
            'fp32 = IEEE float32 throughout.', '',
            '| case | precision | implementation | median ms | min ms | tokens/s | vs PyTorch '
            '| vs jax-cudnn | % of peak | compile s |',
            '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for c in result['cases']:
    for r in c['rows']:
      head = f'| {c["case"]["name"]} | {c["case"]["precision"]} | {r["impl"]} |'
      if r['status'] != 'ok':
        lines.append(f'{head} {r["status"][:160]} | | | | | | |')
        continue
      pf = '-' if r['peak_fraction'] is None else f'{100 * r["peak_fraction"]:.1f}%'
      lines.append(f'{head} {r["median_ms"]:.2f} | {r["min_ms"]:.2f} | '
                   f'{r["tokens_per_s"]:,.0f} | {fmt(r["ratio_to_pytorch"])} | '
                   f'{fmt(r["ratio_to_jax_cudnn"])} | {pf} | {r["compile_s"]:.1f} |')
  for name in result['not_run']:
    lines.append(f'| {name} | | not run: time budget spent | | | | | | | |')
  return '\n'.join(lines) + '\n'


def write(out, result):
  with open(os.path.join(out, 'gpu_check.json'), 'w') as f:
    json.dump(result, f, indent=1)
  md = markdown(result)
  with open(os.path.join(out, 'gpu_check.md'), 'w') as f:
    f.write(md)
  return md


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default=os.environ.get('OUT') or None,
                      help='output folder (default $OUT, else a new temporary folder)')
  parser.add_argument('--tiny', action='store_true', help='CPU-form sizes (default without GPU)')
  parser.add_argument('--budget', type=float, default=170.0,
                      help='seconds for the timed cases; cases not started by then are listed '
                           'as not run')
  parser.add_argument('--reps', type=int, default=None)
  parser.add_argument('--cases', default=None, help='comma-separated case indices')
  parser.add_argument('--pytest-log', default=None)
  parser.add_argument('--junit', default=None)
  parser.add_argument('--pytest-rc', type=int, default=None)
  parser.add_argument('--pytest-seconds', type=int, default=None)
  parser.add_argument('--pytest-cmd', default='')
  parser.add_argument('--pytest-note', default='')
  parser.add_argument('--command', default=None, help='the command to record (gpu_check.sh)')
  args = parser.parse_args(argv)
  out = args.out or tempfile.mkdtemp(prefix='gpu_check_')
  os.makedirs(out, exist_ok=True)
  log = lambda s: print(s, flush=True)
  t_start = time.perf_counter()
  on_gpu = jax.default_backend() == 'gpu'
  tiny = args.tiny or not on_gpu
  info = device_info(on_gpu)
  log(json.dumps(info))
  log(f'writing to {out}')
  build, skipped_impls = builders(on_gpu)
  skipped = []
  if not on_gpu:
    skipped.append(f'no GPU (JAX backend {jax.default_backend()}): tiny sizes; '
                   'jax-cudnn (jax.experimental.rnn\'s cuDNN path) skipped; torch on cuda '
                   'skipped, PyTorch runs on the CPU')
  elif not info.get('torch_cuda_available'):
    skipped.append('torch sees no CUDA device: PyTorch runs on the CPU')
  for s in skipped:
    log(f'SKIPPED: {s}')
  command = args.command or 'python3 bench/bench_gpu.py ' + ' '.join(
      argv if argv is not None else sys.argv[1:])
  if tiny:
    command += ' (CPU form: tiny sizes, its timings only show that the code runs)' 
  result = dict(machine=info, on_gpu=on_gpu, tiny=tiny, command=command, skipped=skipped,
                peak_gflops={}, cases=[], not_run=[], reps=0)
  status = 0
  if args.pytest_log is not None:
    result['tests'] = test_summary(args.junit, args.pytest_log, args.pytest_rc,
                                   args.pytest_seconds, args.pytest_cmd)
    result['tests']['note'] = args.pytest_note
    log(f'equivalence tests: {result["tests"]["counts"]} ok={result["tests"]["ok"]}')
    status = max(status, 0 if result['tests']['ok'] else 1)
  log('cross-check, one set of weights:')
  result['cross_check'] = cross_check(on_gpu, log)
  if any(r['ok'] is False for r in result['cross_check']['rows']):
    status = max(status, 1)
  cases = tiny_cases() if tiny else gpu_cases()
  if args.cases:
    cases = [cases[int(i)] for i in args.cases.split(',')]
  reps = args.reps or (2 if tiny else 5)
  result['reps'] = reps
  for p in sorted({c['precision'] for c in cases}):
    set_precision(p)
    result['peak_gflops'][p] = bl.measure_peak(256 if tiny else 8192)
    log(f'matmul peak at {p}: {result["peak_gflops"][p]:.0f} GFLOP/s')
  write(out, result)
  t_bench = time.perf_counter()
  for i, case in enumerate(cases):
    if time.perf_counter() - t_bench > args.budget:
      result['not_run'] = [c['name'] + f' ({c["precision"]})' for c in cases[i:]]
      log(f'time budget ({args.budget:.0f} s) spent: {len(cases) - i} cases not run')
      break
    log(f'case: {case["name"]} ({case["precision"]})')
    torch_modes = set_precision(case['precision'])
    c = run_gpu_case(case, build, skipped_impls, reps, 0.05 if tiny else 0.15,
                     result['peak_gflops'][case['precision']], log)
    c['torch_precision'] = torch_modes
    result['cases'].append(c)
    if any(r['status'].startswith('error') for r in c['rows']):
      status = max(status, 2)
    try:
      import torch
      if torch.cuda.is_available():
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
      pass
    result['seconds'] = time.perf_counter() - t_start
    write(out, result)
  result['seconds'] = time.perf_counter() - t_start
  result['exit_status'] = status
  log(write(out, result))
  log(f'wrote {out}/gpu_check.md and gpu_check.json; exit status {status}')
  return status


if __name__ == '__main__':
  sys.exit(main())
