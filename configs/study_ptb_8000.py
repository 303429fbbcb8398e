"""The study's check on character-level PTB: do the 2-layer differences hold with 4x the training?

  python -m train.sweep --config=configs/study_ptb_8000.py --sweep_dir=results/study_ptb_8000/runs
  python -m train.report --sweep_dir=results/study_ptb_8000/runs --out=results/study_ptb_8000

One point by hand:

  python main.py --config=configs/study_ptb_8000.py --workdir=runs/x --config.model.between=relu \
      --config.optimizer.learning_rate=0.03 --config.seed=1

configs/study.py compares the PTB arms at a fixed budget of 2,000 steps (0.8 of an epoch), where
no arm has reached a plateau (its docstring gives the probes). This check reruns the five 2-layer
arms (model.between in {none, relu, tanh, gelu, layernorm}) for 8,000 steps (3.3 epochs) with the
same 5 seeds, each at the learning rate its tuning stage chose at 2,000 steps (CHOSEN_RATES, read
from results/study_ptb/runs: the best final validation bpc of seed 0 over {3e-3, 1e-2, 3e-2,
1e-1}; tests/test_study.py checks the two agree). Not tuned again at 8,000 steps: the rate is
part of what is checked. Everything else is configs/study.py's PTB setting, with validation every
800 steps and a checkpoint every 2,000. The report pairs every arm by seed against between=none.

Cost: planned at 25 runs of about 4.5 minutes each on one core of the AMD EPYC family 25 model 17
(2-layer PTB runs of 2,000 steps took 55 to 95 s there, start-up included), about 2 core-hours;
measured there, one run per core: 302 s of training loop per run on average, 2 h 05 min in all
(results/study_ptb_8000/report.md).
"""
from configs import study

NUM_TRAIN_STEPS = 8000
# The learning rate configs/study.py:ptb's tuning stage chose per 2-layer arm (2,000 steps, seed 0).
CHOSEN_RATES = {'none': 3e-2, 'relu': 3e-2, 'tanh': 3e-2, 'gelu': 3e-2, 'layernorm': 1e-2}


def get_config(arg=None):
  del arg
  c = study.get_config('ptb')
  c.num_train_steps = NUM_TRAIN_STEPS
  c.eval_every_steps = NUM_TRAIN_STEPS // 10
  c.checkpoint_every_steps = NUM_TRAIN_STEPS // 4
  c.optimizer.learning_rate = CHOSEN_RATES['none']
  return c


def get_sweep(arg=None):
  del arg
  return {'extra': [{'model.between': b, 'optimizer.learning_rate': CHOSEN_RATES[b]}
                    for b in study.BETWEEN],
          'seeds': study.SEEDS,
          'compare': {'setting': {'model.between': 'none'}}}
