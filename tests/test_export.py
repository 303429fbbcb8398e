"""`train.export`: a trained language model to PyTorch modules and a PyTorch one into a run."""
import json
import os

import numpy as np
import pytest
import torch

import train
from train import export, faults
from train.evaluate import evaluate_run
from train.sample import Sampler, sample
from train.validation import ConfigError
from tests.test_evaluate import run_tool

pytestmark = pytest.mark.slow  # trained runs, PyTorch and the command-line tools as processes


def _tokens(vocab_size, shape=(3, 23), seed=0):
  return np.random.default_rng(seed).integers(0, vocab_size, shape)


def _torch_logits(module, tokens, state=None):
  with torch.no_grad():
    logits, state = module(torch.from_numpy(tokens), state)
  return logits.numpy(), state


@pytest.mark.parametrize('name', ['char', 'word'])  # word: the head tied to the embedding
def test_export_gives_the_same_logits_with_the_state_carried(trained_run, name):
  run = train.load_run(trained_run(name))
  module = export.to_torch(run)
  assert (module.head is None) == run.config.model.tie_embeddings
  tokens = _tokens(len(run.vocab))
  ours, carry = run.model.apply({'params': run.params}, tokens[:, :11])
  ours_next, _ = run.model.apply({'params': run.params}, tokens[:, 11:], initial_carry=carry)
  theirs, state = _torch_logits(module, tokens[:, :11])
  theirs_next, _ = _torch_logits(module, tokens[:, 11:], state)
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(theirs_next, np.asarray(ours_next), atol=1e-5, rtol=1e-5)


def test_what_torch_cannot_represent_is_refused(trained_run):
  run = train.load_run(trained_run('bilm'))  # clipped cell and projection, residual
  with pytest.raises(ConfigError, match='torch.nn.LSTM cannot represent .*cell_clip') as info:
    export.to_torch(run)
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('proj_size, tied, bias', [(0, False, True), (6, False, False),
                                                   (0, True, True)])
def test_import_gives_the_same_logits_and_a_usable_run(trained_run, tmp_path, proj_size, tied,
                                                       bias):
  char = train.load_run(trained_run('char'))  # its vocabulary, and its data for evaluation
  torch.manual_seed(0)
  hidden = 12 if tied else 10
  module = export.TorchLanguageModel.from_sizes(len(char.vocab), 12, hidden, 2, proj_size, bias,
                                                0.0, tied).eval()
  run = export.from_torch(module.embed, module.lstm, module.head, char.vocab,
                          str(tmp_path / 'imported'), config=char.config)
  assert char.config.model.hidden_size == 16  # the caller's config is not changed
  tokens = _tokens(len(char.vocab))
  ours, _ = run.model.apply({'params': run.params}, tokens)
  np.testing.assert_allclose(np.asarray(ours), _torch_logits(module, tokens)[0], atol=1e-5,
                             rtol=1e-5)
  assert run.step == 0 and run.vocab == char.vocab
  assert np.isfinite(evaluate_run(run, 'valid')['metrics']['bpc'])
  greedy = Sampler(run.model, run.params).generate(char.vocab.encode('the '), 20, 0.0)
  assert greedy.shape == (1, 20) and sample(run, 'the ', 20)[0].startswith('the ')


def test_command_line_round_trip(trained_run, tmp_path):
  workdir = trained_run('char')
  out_file, imported = str(tmp_path / 'char.pt'), str(tmp_path / 'imported')
  done = run_tool('train.export', f'--workdir={workdir}', f'--out={out_file}')
  assert done.returncode == 0, done.stderr
  module, vocab, config = export.load(out_file)
  run = train.load_run(workdir)
  assert vocab == run.vocab and config.to_dict() == run.config.to_dict()
  tokens = _tokens(len(vocab))
  np.testing.assert_allclose(_torch_logits(module, tokens)[0],
                             np.asarray(run.model.apply({'params': run.params}, tokens)[0]),
                             atol=1e-5, rtol=1e-5)
  done = run_tool('train.export', f'--from_torch={out_file}', f'--workdir={imported}')
  assert done.returncode == 0, done.stderr
  back = train.load_run(imported)
  assert json.load(open(os.path.join(imported, 'config.json')))['dataset'] == 'ptb_char'
  np.testing.assert_allclose(np.asarray(back.model.apply({'params': back.params}, tokens)[0]),
                             np.asarray(run.model.apply({'params': run.params}, tokens)[0]),
                             atol=1e-5, rtol=1e-5)
  again = run_tool('train.export', f'--from_torch={out_file}', f'--workdir={imported}')
  assert again.stderr.strip().splitlines()[-1] == (
      f'error: {imported} holds a run already; import into a new directory')


def test_files_that_cannot_be_written_or_read_are_one_line(trained_run, tmp_path):
  run = train.load_run(trained_run('char'))
  (tmp_path / 'file').write_text('')
  out = tmp_path / 'file' / 'stack.pt'  # its directory is a file
  with pytest.raises(faults.RunFault,
                     match=f'^could not write {out}: \\[Errno 17\\] File exists$'):
    export.save(export.to_torch(run), run.vocab, str(out))
  with pytest.raises(ConfigError, match=f'^{tmp_path}/missing.pt is not a file; give the file '):
    export.load(str(tmp_path / 'missing.pt'))
  with pytest.raises(ConfigError, match='is not a language model written by train.export --out'):
    export.load(str(tmp_path / 'file'))
