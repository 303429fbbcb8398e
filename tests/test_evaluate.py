"""`python -m train.evaluate`: a trained run on a split of its data or on another text file."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import train
from train.evaluate import evaluate_run
from train.validation import ConfigError
from tests.trainer_utils import ROOT, run_main, write_byte_corpus

pytestmark = pytest.mark.slow  # trained runs and the command-line tools as processes


def workdir_state(workdir):
  """{relative path: sha256} of every file of the run except eval/: what must not change."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, workdir)
      if not rel.startswith('eval' + os.sep):
        with open(path, 'rb') as f:
          out[rel] = hashlib.sha256(f.read()).hexdigest()
  return out


def run_tool(module, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_line_equals_the_run_and_changes_nothing(tmp_path):
  workdir = str(tmp_path / 'run')
  done = run_main(workdir)
  assert done.returncode == 0, done.stderr
  results = json.loads((tmp_path / 'run' / 'results.json').read_text())
  before = workdir_state(workdir)
  for split in ('valid', 'test'):
    out = run_tool('train.evaluate', f'--workdir={workdir}', f'--split={split}')
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / 'run' / 'eval' / f'step30_{split}.json').read_text())
    assert record['metrics'] == results[split]  # exactly the figure the run reported
    assert out.stdout.startswith(f'{split} (step 30, checkpoints): loss {results[split]["loss"]:.4f}')
  assert workdir_state(workdir) == before  # results.json, metrics.jsonl, checkpoints untouched
  bad = run_tool('train.evaluate', f'--workdir={workdir}', '--step=3')
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1] == (
      f'error: {workdir} has no checkpoint at step 3; saved steps: 20, 30; best: 30')


def test_a_file_at_char_level_drops_unknown_characters(trained_run, tmp_path):
  run = train.load_run(trained_run('char'))
  known = 'the market fell sharply\n' * 40
  text = known.replace('market', 'M\u00c5rket\u20ac')  # 3 characters the vocabulary lacks
  path = tmp_path / 'other.txt'
  path.write_text(text, encoding='utf-8')
  assert 'M' not in run.vocab.itos and run.vocab.unk_id is None
  record = evaluate_run(run, data_path=str(path))
  assert record['unknown_tokens'] == 3 * 40 and record['unknown_handling'] == 'dropped'
  assert record['tokens'] == len(text)
  (tmp_path / 'known.txt').write_text(known.replace('market', 'rket'))
  assert record['metrics'] == evaluate_run(run, data_path=str(tmp_path / 'known.txt'))['metrics']


def test_a_file_at_word_level_reads_unknown_words_as_unk(trained_run, tmp_path):
  run = train.load_run(trained_run('word'))
  path = tmp_path / 'words.txt'
  path.write_text('the company said zorblax fell\nthe market gribbled\n' * 30)
  record = evaluate_run(run, data_path=str(path))
  assert record['unknown_tokens'] == 2 * 30 and record['unknown_handling'] == 'read as <unk>'
  assert record['tokens'] == 10 * 30  # 8 words and 2 <eos> per repetition
  assert np.isfinite(record['metrics']['perplexity'])


def test_a_file_at_byte_level_equals_its_split(trained_run, tmp_path):
  workdir = trained_run('byte')
  run = train.load_run(workdir)
  _, valid = write_byte_corpus(str(tmp_path))  # the file the run's validation split read
  record = evaluate_run(run, data_path=valid)
  assert record['unknown_tokens'] == 0
  results = json.loads(open(os.path.join(workdir, 'results.json')).read())
  assert record['metrics'] == results['valid']


def test_errors_are_one_line(trained_run, tmp_path):
  run = train.load_run(trained_run('classify'))
  with pytest.raises(ConfigError, match=r'--data_path is for language models; .* a classify '
                                        r'model of dataset digits'):
    evaluate_run(run, data_path=str(tmp_path))
  char = train.load_run(trained_run('char'))
  for path, match in [(tmp_path / 'missing.txt', 'is not a file'),
                      (tmp_path / 'short.txt', 'holds 6 tokens, too few')]:  # 'the m' and a newline
    if path.name == 'short.txt':
      path.write_text('the m')
    with pytest.raises(ConfigError, match=match) as info:
      evaluate_run(char, data_path=str(path))
    assert '\n' not in str(info.value)
  with pytest.raises(ConfigError, match="--split='train' is not valid or test"):
    evaluate_run(char, 'train')
