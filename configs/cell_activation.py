"""The asker's variant: change the cell's own activation (Keras' `activation`, used for the candidate
and for tanh(c)), with and without clipping the cell state.

  python -m train.sweep --config=configs/cell_activation.py:ptb --sweep_dir=results/cell_activation_ptb/runs
  python -m train.sweep --config=configs/cell_activation.py:mnist1d --sweep_dir=results/cell_activation_mnist1d/runs
  python -m train.report --sweep_dir=results/cell_activation_ptb/runs --out=results/cell_activation_ptb

One point by hand:

  python main.py --config=configs/cell_activation.py:ptb --workdir=runs/x \
      --config.model.activation=relu --config.model.cell_clip=3.0 --config.seed=0

Grid (`get_sweep`): model.activation in {tanh, relu, linear} x model.cell_clip in {none, 3.0} x
seeds {0, 1, 2}: 6 settings, 18 runs per dataset, all with 2 layers and nothing between them (the
stack the question was about). The rest is configs/ablation.py's setting for the same dataset. An
unbounded activation lets the cell state and h grow without limit, and the language model carries
its state from batch to batch, so divergence (a non-finite loss stops the run with status
`diverged`) is part of the result: the report counts diverged runs per setting.

Cost (measured, one core): ptb 10 min for the 18 runs (29 s a tanh run, 50 s with `cell_clip`,
which takes the reference path; diverging runs stop within seconds), mnist1d less.
"""
from configs import ablation

ACTIVATIONS = ['tanh', 'relu', 'linear']
CELL_CLIPS = [None, 3.0]
SEEDS = [0, 1, 2]


def get_config(arg='ptb'):
  c = ablation.get_config(arg)
  c.model.num_layers = 2
  c.model.between = 'none'
  return c


def get_sweep(arg='ptb'):
  ablation.get_sweep(arg)  # checks the argument
  return {'axes': {'model.activation': ACTIVATIONS, 'model.cell_clip': CELL_CLIPS},
          'seeds': SEEDS}
