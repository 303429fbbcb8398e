"""`python -m train.sample` and `train.sample.sample`: text from trained language models."""
import os

import numpy as np
import pytest

import train
from train import sample as sample_lib
from train.run import language_model
from train.validation import ConfigError
from tests.test_evaluate import run_tool, workdir_state

pytestmark = pytest.mark.slow  # trained runs and the command-line tool as a process


def _teacher_forced_argmax(model, params, prompt, generated):
  """The model's own most likely next token after the prompt and each generated token."""
  tokens = np.concatenate([prompt, generated[:-1]])[None]
  logits, _ = model.apply({'params': params}, tokens)
  return np.asarray(logits)[0, len(prompt) - 1:].argmax(-1)


@pytest.mark.parametrize('name', ['char', 'word', 'byte', 'bilm'])
def test_greedy_is_the_argmax_of_the_model_s_logits(trained_run, name):
  run = train.load_run(trained_run(name))
  model, params = language_model(run, 'forward')  # a biLM samples from its forward model
  prompt = run.vocab.encode_prompt('the company ')[0]
  generated = sample_lib.Sampler(model, params).generate(prompt, 40, temperature=0.0)[0]
  np.testing.assert_array_equal(generated, _teacher_forced_argmax(model, params, prompt,
                                                                  generated))


def test_the_step_is_traced_once(trained_run):
  run = train.load_run(trained_run('char'))
  sampler = sample_lib.Sampler(*language_model(run))
  prompt = run.vocab.encode('the ')
  first = sampler.generate(prompt, 200, temperature=1.0, seed=0)
  assert first.shape == (1, 200) and sampler.traces == 1
  sampler.generate(prompt, 200, temperature=0.5, seed=1, num_samples=1)  # other values: no trace
  assert sampler.traces == 1 and sampler.tokens_per_s > 0


def test_deterministic_per_seed(trained_run):
  run = train.load_run(trained_run('char'))
  texts = {seed: sample_lib.sample(run, 'the ', 80, seed=seed, num_samples=2) for seed in (0, 1)}
  assert texts[0] == sample_lib.sample(run, 'the ', 80, seed=0, num_samples=2)
  assert texts[0] != texts[1] and texts[0][0] != texts[0][1]  # seeds and rows draw apart
  assert all(t.startswith('the ') and len(t) == 84 for t in texts[0])


def test_top_k_one_is_greedy_and_top_k_limits_the_draws(trained_run):
  run = train.load_run(trained_run('char'))
  model, params = language_model(run)
  prompt = run.vocab.encode('the ')
  greedy = sample_lib.Sampler(model, params).generate(prompt, 30, temperature=0.0)
  top1 = sample_lib.Sampler(model, params, top_k=1).generate(prompt, 30, temperature=2.0, seed=3)
  np.testing.assert_array_equal(greedy, top1)
  logits = np.asarray(model.apply({'params': params}, prompt[None])[0])[0, -1]
  allowed = set(np.argsort(logits)[-3:])
  sampler = sample_lib.Sampler(model, params, top_k=3)
  firsts = {int(sampler.generate(prompt, 1, temperature=5.0, seed=s)[0, 0]) for s in range(30)}
  assert firsts <= allowed and len(firsts) > 1


def test_word_and_byte_texts(trained_run):
  word = sample_lib.sample(train.load_run(trained_run('word')), 'the company', 12, seed=0)[0]
  assert word.startswith('the company ') and len(word.replace('\n', ' ').split()) == 14
  unprompted = sample_lib.sample(train.load_run(trained_run('byte')), '', 50, seed=0)[0]
  assert isinstance(unprompted, str) and len(unprompted.encode('utf-8', 'replace')) >= 40
  with pytest.raises(ConfigError, match='not a language model'):
    sample_lib.sample(train.load_run(trained_run('classify')))


def test_command_line_prints_samples_and_changes_nothing(trained_run):
  workdir = trained_run('char')
  before = workdir_state(workdir)
  args = [f'--workdir={workdir}', '--prompt=the ', '--length=60', '--seed=5', '--num_samples=2']
  out = run_tool('train.sample', *args)
  assert out.returncode == 0, out.stderr
  texts = out.stdout[:-1].split('\n----\n')
  assert texts == sample_lib.sample(train.load_run(workdir), 'the ', 60, seed=5, num_samples=2)
  assert 'tokens/s once compiled' in out.stderr
  assert workdir_state(workdir) == before and not os.path.exists(os.path.join(workdir, 'eval'))
  bad = run_tool('train.sample', f'--workdir={workdir}', '--temperature=-1')
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1] == 'error: temperature=-1.0 must be >= 0 (0: the ' \
                                                'most likely token)'
