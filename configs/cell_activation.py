"""The asker's variant: change the cell's own activation (Keras' `activation`, used for the candidate
and for tanh(c)), with and without clipping the cell state.

  python -m train.sweep --config=configs/cell_activation.py:ptb --sweep_dir=runs/cell_activation_ptb
  python -m train.sweep --config=configs/cell_activation.py:mnist1d --sweep_dir=runs/cell_activation_mnist1d
  python -m train.report --sweep_dir=runs/cell_activation_ptb --out=results/cell_activation_ptb

One point by hand:

  python main.py --config=configs/cell_activation.py:ptb --workdir=runs/x \
      --config.model.activation=relu --config.model.cell_clip=3.0 --config.seed=0

Grid (`get_sweep`): model.activation in {tanh, relu, linear} x model.cell_clip in {none, 3.0} x
seeds {0, 1, 2}: 6 settings, 18 runs per dataset, all with 2 layers and nothing between them (the
stack the question was about). The rest is configs/ablation.py's setting for the same dataset. An
unbounded activation lets the cell state and h grow without limit, and the language model carries
its state from batch to batch, so divergence (a non-finite loss stops the run with status
`diverged`) is part of the result: the report counts diverged runs per setting.

Cost (2-layer runs as measured for configs/ablation.py on a 2-core CPU): ptb 18 x ~55 s = ~17 min,
mnist1d 18 x ~45 s = ~14 min.
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
