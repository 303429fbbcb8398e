"""train.diagnose: its per-step record is the trainer's own steps (losses and gradient norms equal
to what main.py's training logs), split by layer, with each layer's output at the start."""
import json
import math
import subprocess
import sys

import pytest

import train
from tests.trainer_utils import ROOT, read_metrics, tiny_config
from train import diagnose


def test_the_record_is_the_trainers_steps_split_by_layer(tmp_path):
  config = tiny_config('ptb_char', **{'model.num_layers': 2, 'num_train_steps': 3,
                                      'log_every_steps': 1, 'eval_every_steps': 100,
                                      'checkpoint_every_steps': 100})
  record = diagnose.diagnose(config, 2)
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  logged = [m for m in read_metrics(str(tmp_path / 'run')) if m['split'] == 'train']
  assert [r['step'] for r in record['steps']] == [0, 1, 2]
  for r, m in zip(record['steps'], logged):  # diagnose's step i is the trainer's step i + 1
    assert r['loss'] == pytest.approx(m['loss'], rel=1e-6)
    assert r['grad_norm'] == pytest.approx(m['grad_norm'], rel=1e-5)
    assert r['bpc'] == pytest.approx(r['loss'] / math.log(2))
    norms = r['group_grad_norms']
    assert set(norms) == {'embed', 'head', 'lstm/layer_0', 'lstm/layer_1'}
    assert math.sqrt(sum(v * v for v in norms.values())) == pytest.approx(r['grad_norm'])
    assert all(v > 0 for v in norms.values())
  stds = record['activation_std_at_init']
  for layer in ('lstm/layer_0', 'lstm/layer_1'):
    assert any(k.startswith(layer + '/') and v > 0 for k, v in stds.items()), sorted(stds)


@pytest.mark.slow  # a process of its own
def test_the_command_writes_the_record_and_prints_its_summary(tmp_path):
  config = tmp_path / 'config.py'
  config.write_text(f'import sys\nsys.path.insert(0, {ROOT!r})\n'
                    'from tests.trainer_utils import tiny_config\n\n\n'
                    'def get_config():\n  return tiny_config("ptb_char")\n')
  out = tmp_path / 'diagnosis.json'
  result = subprocess.run([sys.executable, '-m', 'train.diagnose', f'--config={config}',
                           '--steps=2', f'--out={out}', '--config.model.num_layers=3'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(out.read_text())
  assert record['config']['model']['num_layers'] == 3
  assert len(record['steps']) == 3 and 'lstm/layer_2' in record['steps'][0]['group_grad_norms']
  assert result.stdout.splitlines()[0].split() == ['step', 'bpc', 'embed', 'head', 'layer_0',
                                                   'layer_1', 'layer_2']
  assert result.stdout.strip().endswith(f'wrote {out}')
