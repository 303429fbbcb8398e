"""Metric output: TensorBoard event files and `metrics.jsonl` in the workdir, and the console
progress line. Only process 0 writes; a write that fails raises `faults.RunFault`."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping, Optional

import jax
from absl import logging

from train import faults, files


def edit_distance(a, b) -> int:
  """Levenshtein distance between two sequences."""
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    current = [i]
    for j, y in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


def greedy_ctc_decode(best_path, blank: int) -> list:
  """Best-path CTC decoding: merge repeated classes, then drop blanks."""
  out, last = [], None
  for c in best_path:
    if c != last and c != blank:
      out.append(int(c))
    last = c
  return out


def ctc_errors(best_path, batch, blank: int) -> dict[str, float]:
  """Label errors (edit distance of the greedy decoding) and label count over a batch's valid
  utterances."""
  errors = labels = 0
  for b in range(best_path.shape[0]):
    if batch['valid'][b] == 0:
      continue
    hyp = greedy_ctc_decode(best_path[b, :batch['lengths'][b]], blank)
    ref = [int(t) for t, w in zip(batch['targets'][b], batch['weights'][b]) if w > 0]
    errors += edit_distance(hyp, ref)
    labels += len(ref)
  return {'label_errors': float(errors), 'labels': float(labels)}


def derived(kind: str, level: Optional[str], loss: float) -> dict[str, float]:
  """Perplexity or bits per character for language models; nothing extra otherwise."""
  if kind != 'lm':
    return {}
  if level in ('char', 'byte'):
    return {'bpc': loss / math.log(2)}
  return {'perplexity': math.exp(min(loss, 50.0))}


class MetricWriter:
  """Appends {'step', 'split', metrics...} records; on resume drops records past the checkpoint
  (and a torn last line, see `_records_to_keep`).
  A record that cannot be written raises RunFault naming the file."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb = None
    if not self.enabled:
      return
    if os.path.exists(self.path):
      with faults.writing(self.path):  # rewritten without the records past the checkpoint
        kept = _records_to_keep(self.path, resume_step)
        files.atomic_write(self.path, lambda f: f.write(''.join(kept).encode('utf-8')))
    self.tb = EventFile(os.path.join(workdir, 'tensorboard'), purge_step=resume_step + 1)

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in metrics.items()}}
    files.append(self.path, json.dumps(record) + '\n')
    self.tb.write(step, {f'{split}/{k}': float(v) for k, v in metrics.items()})

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _records_to_keep(path: str, resume_step: int) -> list[str]:
  """The lines of `path` up to `resume_step`. A last line that a crash cut off mid-write is
  dropped with a warning; other unreadable lines are dropped too, after the file as it was is
  copied to `<path>.damaged` (with a warning naming the lines)."""
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = [line for line in f if line.strip()]
  kept, bad = [], []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
      step = int(record['step'])
    except (ValueError, KeyError, TypeError):
      bad.append(number)
      continue
    if step <= resume_step:
      kept.append(line if line.endswith('\n') else line + '\n')
  if bad == [len(lines)]:
    logging.warning('%s: its last line was cut off mid-write (a crash); cut back to the %d '
                    'complete records', path, len(lines) - 1)
  elif bad:
    aside = path + '.damaged'
    with open(path, 'rb') as f:
      original = f.read()
    files.atomic_write(aside, lambda f: f.write(original))
    logging.warning('%s: lines %s are not readable records: left out, the file as it was is '
                    'kept as %s', path, ', '.join(map(str, bad[:10])), aside)
  return kept


class EventFile:
  """A TensorBoard event file written in the calling thread (tensorboardX's SummaryWriter
  writes from a thread of its own, where a failed write is lost). `purge_step`: TensorBoard
  hides the records of earlier runs from this step on (a resumed run's steps)."""

  def __init__(self, directory: str, purge_step: int):
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    self.directory = directory
    with faults.writing(directory):
      os.makedirs(directory, exist_ok=True)
      # Named by the second it was opened, and numbered so as not to replace one of that second.
      self.events = EventsWriter(os.path.join(directory, 'events'),
                                 filename_suffix=f'.{len(os.listdir(directory))}')
      self.events.write_event(Event(step=purge_step,
                                    session_log=SessionLog(status=SessionLog.START)))
      self.events.flush()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.summary import scalar
    with faults.writing(self.directory, 'TensorBoard events'):
      for tag, value in scalars.items():
        self.events.write_event(Event(summary=scalar(tag, value), step=int(step),
                                      wall_time=time.time()))
      self.events.flush()

  def close(self) -> None:
    with faults.writing(self.directory, 'TensorBoard events'):
      self.events.close()


def format_duration(seconds: float) -> str:
  """'45s', '3m05s' or '1h02m'; '?' when not finite."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s' if m else f'{s}s'


class Progress:
  """Console line with step, loss, rate and ETA, measured over the steps since the last line."""

  def __init__(self, start_step: int, total_steps: int, tokens_per_step: int):
    self.total, self.tokens = total_steps, tokens_per_step
    self.last_step, self.last_time = start_step, time.perf_counter()
    self.start_step, self.start_time = start_step, self.last_time

  def rate(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    return {'steps_per_s': steps_per_s, 'tokens_per_s': steps_per_s * self.tokens}

  def line(self, step: int, metrics: Mapping[str, float], rate: Mapping[str, float]) -> None:
    if jax.process_index() != 0:
      return
    elapsed = time.perf_counter() - self.start_time
    overall = (step - self.start_step) / max(elapsed, 1e-9)
    eta = (self.total - step) / overall if overall > 0 else float('nan')
    shown = ' | '.join(f'{k} {v:.4g}' for k, v in metrics.items())
    logging.info('step %d/%d | %s | %.2f steps/s | %.0f tok/s | elapsed %s | ETA %s', step,
                 self.total, shown, rate['steps_per_s'], rate['tokens_per_s'],
                 format_duration(elapsed), format_duration(eta))


class _DropLibraryInfo(logging.logging.Filter):
  """Keeps orbax's warnings only: its INFO records are a dozen lines per checkpoint, and its
  ERROR records are the tracebacks of its threads for a failure that it raises to the caller
  too (which reports it in one line)."""

  def filter(self, record) -> bool:
    return '/orbax/' not in record.pathname or record.levelno == logging.logging.WARNING


def quiet_library_logs() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())
