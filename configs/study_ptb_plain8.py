"""The study's probe of the plain 8-layer PTB stack: does any warm-up, rate or budget leave the unigram level?

  python -m train.sweep --config=configs/study_ptb_plain8.py --sweep_dir=results/study_ptb_plain8/runs
  python -m train.report --sweep_dir=results/study_ptb_plain8/runs --out=results/study_ptb_plain8

One point by hand:

  python main.py --config=configs/study_ptb_plain8.py --workdir=runs/x \
      --config.optimizer.warmup_steps=1000 --config.optimizer.learning_rate=0.001

configs/study.py:ptb runs a plain 8-layer stack (nothing between the layers, no residual) with a
500-step warm-up at each of its rates {3e-3, 1e-2, 3e-2, 1e-1}: every one of those runs reached
the unigram level (4.34 validation bpc) within 100 steps and stayed there to step 2,000. This
probe tries what the issue asks for, a warm-up long enough to leave it if one exists, and two
things beside it: warm-up over half and three quarters of the 2,000 steps
(optimizer.warmup_steps in WARMUPS) at a rate below the study's grid and at its lowest (RATES),
and one run four times as long (8,000 steps, a 2,000-step warm-up, 3e-3), in case the plateau is
only slow to leave. Seed 0 only: a probe of whether any setting trains, not a comparison; the
README reports what was tried and what each reached.

Cost: planned at 4 runs of about 5.3 minutes and one of about 21 (the study's 8-layer PTB runs
took 5.3 minutes there); measured on one core of the AMD EPYC family 25 model 17 with the other
core busy: 313 to 372 s for each 2,000-step run and 1,335 s for the 8,000-step one, 45 minutes of
training loop in all (results/study_ptb_plain8/report.md).
"""
from configs import study

WARMUPS = [1000, 1500]
RATES = [1e-3, 3e-3]
LONG = {'num_train_steps': 8000, 'optimizer.warmup_steps': 2000, 'optimizer.learning_rate': 3e-3}


def get_config(arg=None):
  del arg
  c = study.get_config('ptb')
  c.model.num_layers = 8
  c.model.between = 'none'
  c.model.block = 'plain'
  c.optimizer.warmup_steps = WARMUPS[0]
  c.optimizer.learning_rate = RATES[0]
  return c


def get_sweep(arg=None):
  del arg
  return {'axes': {'optimizer.warmup_steps': WARMUPS, 'optimizer.learning_rate': RATES},
          'extra': [LONG],
          'seeds': study.SEEDS[:1]}
