"""The study's pairing: runs of different arms with the same seed see the same data in the same
order and start from the same values of every parameter they share (configs/study.py)."""
import json
import os

import jax
import numpy as np
import pytest

from configs import study
from train import sweep, trainer, workdir as workdir_lib
from tests.trainer_utils import ROOT, tiny_config

pytestmark = pytest.mark.slow  # trains the study's tiny stacks per dataset

ARMS = [{'model.between': 'none'}, {'model.between': 'relu'}, {'model.between': 'layernorm'},
        {'model.between': 'gelu', 'model.residual': True},
        {'model.between': 'none', 'optimizer.learning_rate': 0.1}]


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _start(dataset, seed, arm):
  config = tiny_config(dataset, seed=seed, **{'model.num_layers': 3, **arm})
  s = trainer.setup(config)
  state, _ = trainer.initial_state(s)
  batches = [next(s.train_batches) for _ in range(3)]
  return _flat(state.params), batches


@pytest.mark.parametrize('dataset', ['ptb_char', 'mnist1d'])
def test_same_seed_same_data_order_and_shared_initial_values(dataset):
  params0, batches0 = _start(dataset, 0, ARMS[0])
  for arm in ARMS[1:]:
    params, batches = _start(dataset, 0, arm)
    shared = set(params) & set(params0)
    assert len(shared) >= len(params0) - 1 and any('lstm' in k for k in shared)
    for key in shared:
      np.testing.assert_array_equal(params[key], params0[key], err_msg=f'{arm} {key}')
    for a, b in zip(batches, batches0):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  # and a different seed changes both
  params1, batches1 = _start(dataset, 1, ARMS[0])
  assert any(not np.array_equal(params1[k], params0[k]) for k in params0)
  if dataset == 'mnist1d':  # the language model reads its stream in order whatever the seed
    assert not np.array_equal(batches1[0]['inputs'], batches0[0]['inputs'])


@pytest.mark.parametrize('dataset', study.DATASETS)
def test_study_grid(dataset):
  """16 settings, each tuned over the same learning rates, then 5 seeds; compared with none."""
  grid = study.get_sweep(dataset)
  points = sweep.expand(study.get_config(dataset), grid)
  rates = study.LEARNING_RATES[dataset]
  assert len(points) == 16 * len(rates)
  assert {p.seed for p in points} == {study.SEEDS[0]} and len(study.SEEDS) >= 5
  assert len(rates) >= 3 and max(rates) / min(rates) >= 10
  depths = sorted({p.values['model.num_layers'] for p in points})
  assert depths == [2, 4, 8]
  eight = [p for p in points if p.values['model.num_layers'] == 8]
  assert {p.values['model.between'] for p in eight if p.values['model.residual']} == \
      set(study.BETWEEN)


def test_ptb_8000_check_runs_each_2_layer_arm_at_the_rate_its_tuning_chose():
  """configs/study_ptb_8000.py's rates are what configs/study.py:ptb's tuning stage chose for the
  2-layer arms from the committed runs (results/study_ptb/runs)."""
  from configs import study_ptb_8000
  grid = study.get_sweep('ptb')
  points = [p for p in sweep.expand(study.get_config('ptb'), grid)
            if p.values['model.num_layers'] == 2]
  choices = sweep.choose_tuned(os.path.join(ROOT, 'results', 'study_ptb', 'runs'), points,
                               'optimizer.learning_rate')
  chosen = {json.loads(key)['model.between']: choice['value'] for key, choice in choices.items()}
  assert chosen == study_ptb_8000.CHOSEN_RATES

  check = study_ptb_8000.get_config()
  checks = sweep.expand(check, study_ptb_8000.get_sweep())
  assert check.num_train_steps == 4 * study.NUM_TRAIN_STEPS['ptb']
  assert len(checks) == len(study.BETWEEN) * len(study.SEEDS)
  for p in checks:
    assert p.config.model.num_layers == 2 and p.config.num_train_steps == 8000
    assert p.config.optimizer.learning_rate == chosen[p.config.model.between]


def test_speech_common_rate_check_links_the_studys_own_runs_of_the_same_points():
  """configs/study_speech_common_rate.py runs the residual 8-layer speech arms at the rate the
  tuning stage chose for every arm but between=none, and the runs it links from the study are
  the same points: same name, same config as the check would give them."""
  from configs import study_speech_common_rate as check_config
  grid = study.get_sweep('speech')
  points = [p for p in sweep.expand(study.get_config('speech'), grid)
            if p.values['model.num_layers'] == 8 and p.values.get('model.residual')]
  choices = sweep.choose_tuned(os.path.join(ROOT, 'results', 'study_speech', 'runs'), points,
                               'optimizer.learning_rate')
  chosen = {json.loads(key)['model.between']: choice['value'] for key, choice in choices.items()}
  assert {b for b, rate in chosen.items() if rate == check_config.COMMON_RATE} == \
      set(study.BETWEEN) - {'none'}
  assert chosen['none'] != check_config.COMMON_RATE

  check_dir = os.path.join(ROOT, 'results', 'study_speech_common_rate', 'runs')
  checks = sweep.expand(check_config.get_config(), check_config.get_sweep())
  assert len(checks) == len(study.BETWEEN) * len(study.SEEDS)
  linked = 0
  for p in checks:
    workdir = os.path.join(check_dir, p.name)
    if not os.path.islink(workdir):
      continue
    linked += 1
    target = os.path.realpath(workdir)
    assert os.path.dirname(target) == os.path.realpath(
        os.path.join(ROOT, 'results', 'study_speech', 'runs'))
    assert os.path.basename(target) == p.name
    with open(os.path.join(target, 'config.json')) as f:  # saved before the blocks: upgraded
      saved = workdir_lib.config_from_dict(json.load(f), 'config.json')
    assert json.loads(saved.to_json()) == json.loads(p.config.to_json())
    assert sweep.point_status(workdir) == 'completed'
  assert linked == 21  # none's seed 0 (its tuning run) and every seed of the other four arms


def test_plain_8_layer_ptb_probe_differs_from_the_study_only_in_what_it_probes():
  """configs/study_ptb_plain8.py is the study's plain 8-layer PTB setting with longer warm-ups, a
  rate below the grid, and one longer run; nothing else about the model or the data changes."""
  from configs import study_ptb_plain8 as probe
  plain = [p for p in sweep.expand(study.get_config('ptb'), study.get_sweep('ptb'))
           if p.values['model.num_layers'] == 8 and not p.values.get('model.residual')]
  reference = json.loads(plain[0].config.to_json())
  probed = {('optimizer', 'warmup_steps'), ('optimizer', 'learning_rate'), ('num_train_steps',),
            ('eval_every_steps',), ('checkpoint_every_steps',), ('seed',)}
  points = sweep.expand(probe.get_config(), probe.get_sweep())
  assert len(points) == len(probe.WARMUPS) * len(probe.RATES) + 1
  for p in points:
    config = json.loads(p.config.to_json())
    for section, values in config.items():
      for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
        path = (section,) if key is None else (section, key)
        if path not in probed:
          assert value == reference[section][key] if key else value == reference[section], path
    assert p.config.optimizer.warmup_steps > study.WARMUP_8_PLAIN['ptb']
  assert min(probe.RATES) < min(study.LEARNING_RATES['ptb'])
  assert max(p.config.num_train_steps for p in points) == 4 * study.NUM_TRAIN_STEPS['ptb']


def test_blocks_study_tunes_on_its_own_seeds_and_evaluates_on_five_fresh_ones():
  """configs/study_blocks.py: every sweep but ptb_long tunes on two seeds that are never
  evaluation seeds, over a grid of 3 rates spanning 10x; ptb_long runs 4x the steps."""
  from configs import study_blocks as blocks
  for name in ('ptb', 'ptb_wide', 'speech'):
    grid = sweep.check_sweep(blocks.get_sweep(name))
    assert len(grid['tune_seeds']) >= 2 and len(grid['seeds']) == 5
    assert not set(grid['tune_seeds']) & set(grid['seeds'])
    rates = grid['tune']['optimizer.learning_rate']
    assert len(rates) == 3 and max(rates) / min(rates) >= 10
    # an edge chosen by any arm grows the grid on that side by one value, in the grid's steps
    assert grid['extend']['below'] == [pytest.approx(min(rates) ** 2 / sorted(rates)[1], rel=0.12)]
    assert grid['extend']['above'] == [pytest.approx(max(rates) ** 2 / sorted(rates)[1], rel=0.12)]
    reference = blocks.REFERENCE_OF[name]
    for depth in blocks.DEPTHS_OF[name]:  # every depth has its reference arm
      assert any(all(s.get(k) == v for k, v in reference.items()) and
                 s['model.num_layers'] == depth for s in grid['extra']), (name, depth)
  assert blocks.get_config('ptb_long').num_train_steps == \
      4 * study.NUM_TRAIN_STEPS['ptb'] == 4 * blocks.get_config('ptb').num_train_steps
  assert blocks.get_config('ptb_wide').model.hidden_size == 256
  # the op sits on the branch (block=residual) and the earlier form is kept as the link
  ptb = blocks.settings('ptb')
  assert {s.get('model.between') for s in ptb if s.get('model.block') == 'residual'} >= \
      {'none', 'relu', 'tanh', 'gelu'}
  assert any(s.get('model.block') == 'residual_op_on_skip' for s in ptb)
  # ptb_long only evaluates settings that :ptb tunes (it reads their chosen rates)
  keys = lambda name: {json.dumps(s, sort_keys=True) for s in blocks.settings(name)}
  assert keys('ptb_long') <= keys('ptb')


def test_blocks_study_parameter_count_matches_the_models_own_and_the_matched_width():
  """param_count reproduces the plain stacks' counts that the runs wrote (configs/study.py's
  results), and the matched feed-forward arm is within 2% of prenorm's count."""
  from configs import study_blocks as blocks
  written = {}
  for dataset, name in (('ptb', 'between=none,num_layers={},learning_rate=0.03,seed=0'),
                     ('speech', 'between=none,num_layers={},learning_rate=0.001,seed=0')):
    for depth in (2, 4):
      path = os.path.join(ROOT, 'results', f'study_{dataset}', 'runs', name.format(depth),
                          'results.json')
      written[dataset, depth] = json.load(open(path))['num_params']
      hidden = study.get_config(dataset).model.hidden_size
      assert blocks.param_count(dataset, depth, hidden, block='plain') == written[dataset, depth]
  for (name, depth), hidden in blocks.FFN_MATCHED_HIDDEN.items():
    kind = 'speech' if name == 'speech' else 'ptb'
    target = blocks.param_count(kind, depth, blocks.HIDDEN[name])
    matched = blocks.param_count(kind, depth, hidden, blocks.FFN['model.ffn_factor'])
    assert abs(matched - target) / target < 0.02 and hidden < blocks.HIDDEN[name]


def test_blocks_study_plan_counts_every_run_of_its_grids():
  """The plan's run count is what the sweeps define: settings x (rates x tuning seeds + 5)."""
  from configs import study_blocks as blocks
  rows = blocks.plan()
  for name in ('ptb', 'ptb_wide', 'speech'):
    grid = blocks.get_sweep(name)
    expected = len(grid['extra']) * (len(grid['tune']['optimizer.learning_rate'])
                                     * len(grid['tune_seeds']) + len(grid['seeds']))
    assert sum(r['runs'] for r in rows if r['sweep'] == name) == expected
  assert sum(r['runs'] for r in rows if r['sweep'] == 'ptb_long') == \
      len(blocks.settings('ptb_long')) * len(blocks.SEEDS)
  assert 25 < sum(r['core_hours'] for r in rows) < 35


@pytest.mark.parametrize('dataset', ['ptb', 'speech'])
def test_blocks_study_parameter_count_is_the_stacks_own(dataset):
  """configs/study_blocks.py's param_count, less the embedding and the head, is the number of
  parameters StackedLSTM creates, for every block form and the matched feed-forward arm."""
  from configs import study_blocks as blocks
  from lstm import StackedLSTM
  width = 2 if dataset == 'speech' else 1
  for depth in (4, 8):
    for hidden, ffn, block in [(blocks.HIDDEN[dataset], 0, 'plain'),
                               (blocks.HIDDEN[dataset], 0, 'prenorm'),
                               (blocks.HIDDEN[dataset], 0, 'postnorm'),
                               (blocks.FFN_MATCHED_HIDDEN[dataset, depth], 4 / 3, 'prenorm')]:
      model = StackedLSTM(num_layers=depth, hidden_size=hidden, bidirectional=dataset == 'speech',
                          block=block, ffn_factor=ffn, ffn_gated=True)
      x = jax.ShapeDtypeStruct((1, 3, blocks.INPUTS[dataset]), jax.numpy.float32)
      created = sum(a.size for a in jax.tree.leaves(jax.eval_shape(model.init,
                                                                   jax.random.key(0), x)))
      outside = width * hidden * blocks.OUTPUTS[dataset] + blocks.OUTPUTS[dataset] \
          + blocks.EMBEDDING[dataset]
      assert blocks.param_count(dataset, depth, hidden, ffn, block=block) - outside == created
