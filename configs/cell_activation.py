"""The asker's variant: change the cell's own activation (Keras' `activation`, used for the candidate
and for tanh(c)), with and without clipping the cell state, under the study's protocol.

  python -m train.sweep --config=configs/cell_activation.py:ptb --sweep_dir=results/study_cell_activation_ptb/runs
  python -m train.sweep --config=configs/cell_activation.py:mnist1d --sweep_dir=results/study_cell_activation_mnist1d/runs
  python -m train.report --sweep_dir=results/study_cell_activation_ptb/runs --out=results/study_cell_activation_ptb

One point by hand:

  python main.py --config=configs/cell_activation.py:ptb --workdir=runs/x \
      --config.model.activation=relu --config.model.cell_clip=3.0 \
      --config.optimizer.learning_rate=0.003 --config.seed=0

Grid (`get_sweep`): model.activation in {tanh, relu, linear} x model.cell_clip in {none, 3.0}: 6
settings, all with 2 layers and nothing between them (the stack the question was about), each
tuned over configs/study.py's learning rates with seed 0 and then run with its 5 seeds at the
chosen rate; each activation is paired against tanh with the same cell_clip. The rest is
configs/study.py's setting for the same task. An unbounded activation lets the cell state and h
grow without limit, and the language model carries its state from batch to batch, so divergence
(a non-finite loss stops the run with status `diverged`) is part of the result: the report counts
diverged runs, and a rate at which a tuning run diverged is never chosen.

Cost: 6 settings x 8 runs = 48 runs of the 2-layer size of configs/study.py (about 110 s each on
ptb, 55 s on mnist1d: ~1.5 and ~0.7 core-hours; `cell_clip` takes the reference path, slower).
"""
from configs import study

ACTIVATIONS = ['tanh', 'relu', 'linear']
CELL_CLIPS = [None, 3.0]


def get_config(arg='ptb'):
  c = study.get_config(arg)
  c.model.num_layers = 2
  c.model.between = 'none'
  return c


def get_sweep(arg='ptb'):
  grid = study.get_sweep(arg)  # checks the argument
  return {'axes': {'model.activation': ACTIVATIONS, 'model.cell_clip': CELL_CLIPS},
          'seeds': grid['seeds'], 'tune': grid['tune'],
          'compare': {'field': 'model.activation', 'reference': 'tanh'}}
