"""The study, round three: the block between stacked LSTM layers, the op on the branch only.

  python -m train.sweep --config=configs/study_blocks.py:ptb --sweep_dir=results/study_blocks_ptb/runs
  python -m train.sweep --config=configs/study_blocks.py:speech --sweep_dir=results/study_blocks_speech/runs
  python -m train.sweep --config=configs/study_blocks.py:ptb_wide --sweep_dir=results/study_blocks_ptb_wide/runs
  # once :ptb's tuning stage has finished (it reads the rates chosen there):
  python -m train.sweep --config=configs/study_blocks.py:ptb_long --sweep_dir=results/study_blocks_ptb_long/runs
  # each report, and the answer's comparisons corrected as one family:
  python -m train.report --sweep_dir=results/study_blocks_ptb/runs --out=results/study_blocks_ptb
  # (the same for ptb_long, ptb_wide and speech)
  python -m train.report --family=results/study_blocks_ptb/runs,results/study_blocks_ptb_long/runs,\
results/study_blocks_ptb_wide/runs,results/study_blocks_speech/runs --out=results/study_blocks

One point by hand (what the sweep runs for it):

  python main.py --config=configs/study_blocks.py:ptb --workdir=runs/x --config.model.block=prenorm \
      --config.model.norm=layernorm --config.model.num_layers=4 \
      --config.optimizer.learning_rate=0.01 --config.seed=100

Protocol (what changed from configs/study.py, and why):
- The op sits on the branch only. configs/study.py's residual arms put the op on the skip path
  too (x = op(y); x + LSTM(x)); here `model.block='residual'` is y + LSTM(op(y)), and the old
  form stays as `residual_op_on_skip` with layernorm and one activation, the link to the earlier
  tables.
- Tuning on two seeds of its own (TUNE_SEEDS, 100 and 101: never evaluation seeds) at every rate
  of LEARNING_RATES[dataset]; a setting's rate is the one with the best final validation metric
  averaged over both (a rate with a diverged tuning run is not chosen). Evaluation on 5 fresh
  seeds (SEEDS, 0-4) at that rate; no tuning run is an evaluation run (train.sweep's
  'tune_seeds', train.report's "Tuning" section). Where any arm of a sweep chooses an edge of the
  grid, the grid is extended on that side for every arm of the sweep before its seeds run, by
  one value (EXTEND, train.sweep's 'extend': no seed starts before every arm is tuned; the plan
  keeps a reserve for one extension).
- Paired: a seed fixes the data order and the initial values of the parameters two arms share;
  each arm is compared with REFERENCE (the plain stack, nothing between the layers) at the same
  depth and width, per seed, with the t interval, the Wilcoxon signed-rank p and a bootstrap
  interval of the median difference, Holm and Benjamini-Hochberg over the report; the answer's
  comparisons of all four sweeps are corrected together (`train.report --family`). A second
  comparison pairs each block with a skip connection (WITH_SKIP) with the residual block
  (RESIDUAL) at its depth, in the same family; it was added after speech's evaluation runs had
  finished and before any of PTB's had started (docs/study-round-three.md).
- Parameter counts are in every table; the feed-forward arm also runs at a matched count
  (`prenorm_ffn_matched`: the hidden size of FFN_MATCHED_HIDDEN, computed by `param_count`).
- Budget: PTB arms at 2,000 steps (as configs/study.py, 0.8 of an epoch) and, for the arms the
  answer rests on, at 8,000 steps (`:ptb_long`, 4x; evaluated at the rate `:ptb`'s tuning chose,
  the same way configs/study_ptb_8000.py did: tuning at 8,000 steps would cost 4x again); the
  plateau table of each report says how far from a plateau each is. Speech at 1,000 steps, where
  the earlier arms met the plateau criterion.
- Dropout between layers (`model.dropout`) runs where the reference overfits: speech, at 2
  layers. The committed runs of configs/study.py:speech show it: between=none at 2 layers, rate
  1e-3, ends with training loss 0.005 while its validation loss is 0.34 to 1.13, and in 3 of 5
  seeds the validation loss is lowest at the 3rd of 10 evaluations and rises after (seed 4: 0.965
  to 1.125). On PTB at these budgets it does not (validation loss lowest at the last evaluation
  in every run, training loss 1.27-1.30 against validation 1.30-1.31), so no PTB dropout arm.
- MNIST-1D is dropped: at its earlier size (1,000 test examples) one point of accuracy is 10
  examples, and making it 50 would need a test set of 5,000 and a validation set to match, while
  the earlier study found no op that mattered there (intervals within 0.2-1.2 points); its cost
  goes to PTB's longer runs instead.

Arms (`ARMS`; `model.between` is the op, 'none' unless named; the first layer is always plain):
  plain, plain_layernorm (between=layernorm, LSTM(drop(op(y)))), residual (y + LSTM(y)),
  residual_relu / _tanh / _gelu (y + LSTM(op(y))), prenorm (y + LSTM(norm(y)), a final norm;
  layernorm), prenorm_rmsnorm (speech, 4 layers: RMSNorm at one depth), postnorm (norm(y + LSTM(y))), prenorm_ffn (with a
  gated feed-forward sublayer, factor 4/3, gelu, as xLSTM's sLSTM block), prenorm_ffn_matched
  (the same at FFN_MATCHED_HIDDEN, the parameter count of prenorm), skip_layernorm and
  skip_gelu / skip_tanh (residual_op_on_skip, the earlier tables' form); at 2 layers: plain,
  proj_size = half the width (LSTMP), the cell's own layer_norm, and on speech dropout=0.3 between layers.
  Which arms run at which depth per sweep: DEPTHS_OF.

Plan and cost (`print_plan()` prints this table from SECONDS_PER_RUN; runs = arms x (3 rates x
2 tuning seeds + 5 evaluation seeds), ptb_long 5 seeds per arm; seconds per run from the
committed runs of the same shapes, one run per core of the 2-core AMD EPYC family 25 model 17;
docs/study-round-three.md has the timings behind it):

  | sweep | depth | width | steps | arms | runs | s per run | core-hours |
  |---|---:|---:|---:|---|---:|---:|---:|
  | ptb | 2 | 128 | 2,000 | plain, residual, proj, cell_layernorm | 44 | 74 | 0.9 |
  | ptb | 4 | 128 | 2,000 | plain, plain_layernorm, residual, residual_relu, residual_tanh, residual_gelu, prenorm, postnorm, prenorm_ffn, prenorm_ffn_matched, skip_layernorm | 121 | 160/200 | 5.6 |
  | ptb | 8 | 128 | 2,000 | plain, plain_layernorm, residual, residual_gelu, prenorm, skip_layernorm | 66 | 350 | 6.4 |
  | ptb_long | 4 | 128 | 8,000 | plain_layernorm, residual, prenorm, prenorm_ffn | 20 | 640/800 | 3.8 |
  | ptb_long | 8 | 128 | 8,000 | residual, prenorm | 10 | 1335 | 3.7 |
  | ptb_wide | 4 | 256 | 2,000 | residual, prenorm | 22 | 640 | 3.9 |
  | speech | 2 | 64 | 1,000 | plain, residual, proj, cell_layernorm, dropout | 55 | 39 | 0.6 |
  | speech | 4 | 64 | 1,000 | plain, plain_layernorm, residual, residual_relu, residual_tanh, residual_gelu, prenorm, prenorm_rmsnorm, postnorm, prenorm_ffn, prenorm_ffn_matched, skip_layernorm | 132 | 88/110 | 3.4 |
  | speech | 8 | 64 | 1,000 | plain, plain_layernorm, residual, residual_tanh, prenorm, skip_tanh | 66 | 201 | 3.7 |
  | all | | | | | 536 | | 32.0 (+1.3 reserve) |

Run one point per core: one sweep per core (`taskset -c 0 python -m train.sweep ...` and
`taskset -c 1 ...` for another sweep), or one sweep with `--parallel=2 --cores_per_point=1`; not
with --parallel=2 alone: each point's process uses XLA's and the CPU kernel's threads on every
core it may use, so two points at once would share both cores and each run slower.
"""
from __future__ import annotations

import os

from configs import common, study

SWEEPS = ('ptb', 'ptb_long', 'ptb_wide', 'speech')
TUNE_SEEDS = [100, 101]
SEEDS = [0, 1, 2, 3, 4]
LEARNING_RATES = {'ptb': [3e-3, 1e-2, 3e-2], 'speech': [1e-3, 3e-3, 1e-2]}
# the value a grid gains on a side where some arm chose its edge
EXTEND = {'ptb': {'below': [1e-3], 'above': [1e-1]}, 'speech': {'below': [3e-4], 'above': [3e-2]}}
NUM_TRAIN_STEPS = {'ptb': 2000, 'ptb_long': 8000, 'ptb_wide': 2000, 'speech': 1000}
HIDDEN = {'ptb': 128, 'ptb_long': 128, 'ptb_wide': 256, 'speech': 64}
REFERENCE = {'model.block': 'plain', 'model.between': 'none'}
FFN = {'model.ffn_factor': 4 / 3, 'model.ffn_gated': True, 'model.ffn_activation': 'gelu'}

ARMS = {
    'plain': {},
    'plain_layernorm': {'model.between': 'layernorm'},
    'residual': {'model.block': 'residual'},
    'residual_relu': {'model.block': 'residual', 'model.between': 'relu'},
    'residual_tanh': {'model.block': 'residual', 'model.between': 'tanh'},
    'residual_gelu': {'model.block': 'residual', 'model.between': 'gelu'},
    'prenorm': {'model.block': 'prenorm', 'model.norm': 'layernorm'},
    'prenorm_rmsnorm': {'model.block': 'prenorm', 'model.norm': 'rmsnorm'},
    'postnorm': {'model.block': 'postnorm', 'model.norm': 'layernorm'},
    'prenorm_ffn': {'model.block': 'prenorm', 'model.norm': 'layernorm', **FFN},
    'prenorm_ffn_matched': {'model.block': 'prenorm', 'model.norm': 'layernorm', **FFN},
    'skip_layernorm': {'model.block': 'residual_op_on_skip', 'model.between': 'layernorm'},
    'skip_gelu': {'model.block': 'residual_op_on_skip', 'model.between': 'gelu'},
    'skip_tanh': {'model.block': 'residual_op_on_skip', 'model.between': 'tanh'},
    'proj': {'model.proj_size': 64},  # half the sweep's width (settings)
    'cell_layernorm': {'model.layer_norm': True},
    'dropout': {'model.dropout': 0.3},
}
_BRANCH = ['residual_relu', 'residual_tanh', 'residual_gelu']
DEPTHS_OF = {
    'ptb': {2: ['plain', 'residual', 'proj', 'cell_layernorm'],
            4: ['plain', 'plain_layernorm', 'residual', *_BRANCH, 'prenorm', 'postnorm',
                'prenorm_ffn', 'prenorm_ffn_matched', 'skip_layernorm'],
            8: ['plain', 'plain_layernorm', 'residual', 'residual_gelu', 'prenorm',
                'skip_layernorm']},
    # the arms the answer rests on, 4x longer, at the rates :ptb's tuning chose
    'ptb_long': {4: ['plain_layernorm', 'residual', 'prenorm', 'prenorm_ffn'],
                 8: ['residual', 'prenorm']},
    'ptb_wide': {4: ['residual', 'prenorm']},
    'speech': {2: ['plain', 'residual', 'proj', 'cell_layernorm', 'dropout'],
               4: ['plain', 'plain_layernorm', 'residual', *_BRANCH, 'prenorm', 'prenorm_rmsnorm',
                   'postnorm', 'prenorm_ffn', 'prenorm_ffn_matched', 'skip_layernorm'],
               8: ['plain', 'plain_layernorm', 'residual', 'residual_tanh', 'prenorm',
                   'skip_tanh']},
}
# Each arm is paired with REFERENCE_OF[sweep] at the same depth: the plain stack, except in the
# sweeps that run only blocks with a residual, where it is the residual block (y + LSTM(y)).
RESIDUAL = {'model.block': 'residual', 'model.between': 'none'}
REFERENCE_OF = {'ptb': REFERENCE, 'ptb_long': RESIDUAL, 'ptb_wide': RESIDUAL,
                'speech': REFERENCE}


# ----------------------------------------------------------------------------------------------
# Parameter counts (for the matched feed-forward arm)

INPUTS = {'ptb': 32, 'speech': 120}     # the first layer's input width: embedding / features
OUTPUTS = {'ptb': 50, 'speech': 11}     # characters / digits and the CTC blank
EMBEDDING = {'ptb': 50 * 32, 'speech': 0}


def _dataset(sweep: str) -> str:
  """configs/study.py's argument for the data of `sweep` (a sweep of this file, or already that
  argument)."""
  return 'speech' if sweep == 'speech' else 'ptb'


def param_count(sweep: str, num_layers: int, hidden: int, ffn_factor: float = 0.0,
                gated: bool = True, block: str = 'prenorm') -> int:
  """Parameters of a stack as the study builds it: canonical LSTM layers (4 (in H + H H + H) per
  direction), the first plain, each later one a block with a layer norm (2 W; prenorm adds a final
  one) and, with `ffn_factor`, a feed-forward sublayer with its own norm (gated: W -> 2 F -> F ->
  W, else W -> F -> W; F = round(ffn_factor W)); the embedding and the output layer. W is the
  width between layers (2 H for speech's bidirectional stack). Checked against the model's own
  count by tests/test_study.py where the block forms exist."""
  dataset = _dataset(sweep)
  directions = 2 if dataset == 'speech' else 1
  width = directions * hidden
  lstm = lambda n_in: directions * 4 * (n_in * hidden + hidden * hidden + hidden)
  total = EMBEDDING[dataset] + lstm(INPUTS[dataset]) + width * OUTPUTS[dataset] + OUTPUTS[dataset]
  inner = round(ffn_factor * width)
  ffn = 0
  if ffn_factor:
    ffn = (width * 2 * inner + 2 * inner if gated else width * inner + inner) \
        + inner * width + width + 2 * width
  norms = 2 * width if block in ('prenorm', 'postnorm') else 0
  total += (num_layers - 1) * (lstm(width) + norms + ffn)
  return total + (2 * width if block == 'prenorm' else 0)


def matched_hidden(sweep: str, num_layers: int, hidden: int) -> int:
  """The hidden size at which prenorm with the feed-forward sublayer has the parameter count
  nearest to prenorm's without it at `hidden`."""
  target = param_count(sweep, num_layers, hidden)
  return min(range(hidden // 2, hidden + 1),
             key=lambda h: abs(param_count(sweep, num_layers, h, FFN['model.ffn_factor']) - target))


FFN_MATCHED_HIDDEN = {(sweep, depth): matched_hidden(_dataset(sweep), depth, HIDDEN[sweep])
                      for sweep in SWEEPS for depth in DEPTHS_OF[sweep]}


# ----------------------------------------------------------------------------------------------
# Configs and grids


def get_config(arg='ptb'):
  sweep = common.choice(arg, SWEEPS, 'ptb', 'configs/study_blocks.py')
  c = study.get_config(_dataset(sweep))
  c.model.hidden_size = HIDDEN[sweep]
  c.num_train_steps = NUM_TRAIN_STEPS[sweep]
  c.eval_every_steps = c.num_train_steps // 10
  c.checkpoint_every_steps = c.num_train_steps // 4
  c.optimizer.learning_rate = LEARNING_RATES[_dataset(sweep)][1]
  c.seed = SEEDS[0]
  return c


def settings(sweep: str) -> list[dict]:
  """The sweep's settings, as the sweep's extra points (the tuned rate not set)."""
  out = []
  for depth, arms in DEPTHS_OF[sweep].items():
    for arm in arms:
      setting = {**REFERENCE, **ARMS[arm], 'model.num_layers': depth}
      if arm == 'prenorm_ffn_matched':
        setting['model.hidden_size'] = FFN_MATCHED_HIDDEN[sweep, depth]
      if arm == 'proj':  # LSTMP: h projected to half the cell's width
        setting['model.proj_size'] = HIDDEN[sweep] // 2
      out.append(setting)
  return out


# Blocks with a skip connection, also paired with RESIDUAL (op = identity) at the same depth where
# the first comparison's reference is the plain stack: what the op on the branch, a norm in the
# block or the op on the skip path does beyond the residual itself.
WITH_SKIP = ['residual', 'prenorm', 'postnorm', 'residual_op_on_skip']


def _compare(sweep: str) -> list[dict]:
  compare = [{'setting': REFERENCE_OF[sweep], 'by': ['model.num_layers']}]
  if REFERENCE_OF[sweep] != RESIDUAL:
    compare.append({'setting': RESIDUAL, 'by': ['model.num_layers'],
                    'arms': {'model.block': WITH_SKIP}})
  return compare


RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results')


def chosen_rates(sweep_dir: str = os.path.join(RESULTS, 'study_blocks_ptb', 'runs')) -> dict:
  """{setting as JSON: rate} that :ptb's tuning stage chose in `sweep_dir`, once every setting's
  tuning has finished and no grid extension is left to run (empty before)."""
  from train import sweep as sweep_lib
  if not os.path.isdir(sweep_dir):
    return {}
  _, _, choices, ready = sweep_lib.tune_stage(get_config('ptb'),
                                              sweep_lib.check_sweep(get_sweep('ptb')), sweep_dir)
  if not ready:  # an arm still tuning could yet extend the grid and change every choice
    return {}
  return {key: c['value'] for key, c in choices.items() if c['value'] is not None}


def get_sweep(arg='ptb'):
  sweep = common.choice(arg, SWEEPS, 'ptb', 'configs/study_blocks.py')
  if sweep != 'ptb_long':
    return {'extra': settings(sweep), 'tune_seeds': TUNE_SEEDS, 'seeds': SEEDS,
            'tune': {'optimizer.learning_rate': LEARNING_RATES[_dataset(sweep)]},
            'extend': EXTEND[_dataset(sweep)],
            'compare': _compare(sweep)}
  # 8,000 steps at the rate :ptb's tuning chose for the same setting; empty until that tuning,
  # its grid extension included, has finished (run the sweep once it has).
  from train import sweep as sweep_lib
  rates = chosen_rates()
  ptb = sweep_lib.check_sweep(get_sweep('ptb'))
  fields, base = sweep_lib.swept_fields(ptb), get_config('ptb')
  extra = []
  for setting in settings('ptb_long'):
    config = sweep_lib.apply_overrides(base, setting)
    key = sweep_lib.setting_key({k: sweep_lib.get_field(config, k) for k in fields},
                                list(ptb['tune']))
    if rates.get(key) is not None:
      extra.append({**setting, 'optimizer.learning_rate': rates[key]})
  return {'extra': extra, 'seeds': SEEDS, 'compare': _compare(sweep)}


# ----------------------------------------------------------------------------------------------
# The plan

# Seconds per run (training loop with its 10 evaluations), from the committed runs of the same
# shapes: medians of configs/study.py's runs (PTB 2,000 steps, speech 1,000) and
# configs/study_ptb_8000.py / study_ptb_plain8.py's (8,000 steps), one run per core of the 2-core
# AMD EPYC family 25 model 17 with the other core busy; 4 layers at 8,000 steps from its 2,000-step
# median at its per-step rate; width 256 at 4x width 128 (timed 100-step runs: 0.56 against
# 2.80 steps/s, 5.0x, but at load averages 13.7 against 9.8; docs/study-round-three.md).
SECONDS_PER_RUN = {('ptb', 2, 128, 2000): 74, ('ptb', 4, 128, 2000): 160,
                   ('ptb', 8, 128, 2000): 350, ('ptb', 4, 128, 8000): 640,
                   ('ptb', 8, 128, 8000): 1335, ('ptb', 4, 256, 2000): 640,
                   ('speech', 2, 64, 1000): 39, ('speech', 4, 64, 1000): 88,
                   ('speech', 8, 64, 1000): 201}
FFN_COST = 1.25  # assumed, not measured: the feed-forward sublayer is not in this tree yet
EXTENSION_RESERVE = 0.1  # of the tuning runs: one grid extension for some arms


def plan() -> list[dict]:
  """One row per (sweep, depth, arm): runs and core-hours from SECONDS_PER_RUN."""
  rows = []
  for sweep in SWEEPS:
    dataset = _dataset(sweep)
    tuning = 0 if sweep == 'ptb_long' else len(LEARNING_RATES[dataset]) * len(TUNE_SEEDS)
    for depth, arms in DEPTHS_OF[sweep].items():
      seconds = SECONDS_PER_RUN[dataset, depth, HIDDEN[sweep], NUM_TRAIN_STEPS[sweep]]
      for arm in arms:
        cost = seconds * (FFN_COST if 'ffn' in arm else 1.0)
        runs = tuning + len(SEEDS)
        rows.append({'sweep': sweep, 'depth': depth, 'arm': arm, 'width': HIDDEN[sweep],
                     'steps': NUM_TRAIN_STEPS[sweep], 'runs': runs, 'seconds': cost,
                     'core_hours': runs * cost / 3600})
  return rows


def print_plan() -> None:
  """The plan as the docstring's table: python -c 'from configs import study_blocks as s;
  s.print_plan()'."""
  rows = plan()
  print('| sweep | depth | width | steps | arms | runs | s per run | core-hours |')
  print('|---|---:|---:|---:|---|---:|---:|---:|')
  groups: dict = {}
  for r in rows:
    groups.setdefault((r['sweep'], r['depth'], r['width'], r['steps']), []).append(r)
  total_runs = total = 0.0
  for (sweep, depth, width, steps), members in groups.items():
    runs = sum(r['runs'] for r in members)
    hours = sum(r['core_hours'] for r in members)
    per = sorted({round(r['seconds']) for r in members})
    print(f'| {sweep} | {depth} | {width} | {steps:,} | {", ".join(r["arm"] for r in members)} '
          f'| {runs} | {"/".join(map(str, per))} | {hours:.1f} |')
    total_runs, total = total_runs + runs, total + hours
  reserve = sum(r['core_hours'] * (1 - len(SEEDS) / r['runs']) for r in rows
                if r['sweep'] != 'ptb_long') * EXTENSION_RESERVE
  print(f'| all | | | | | {total_runs:.0f} | | {total:.1f} (+{reserve:.1f} reserve) |')
