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
settings, all with 2 layers and nothing between them (the stack the question was about). Keras'
`activation` sets the candidate activation and the one applied to the cell state (h = o *
act(c)) together, as the asker changed them; four more settings separate the two (Greff et al.
2017: NIAF and NOAF), without cell_clip: `model.candidate_activation` in {relu, linear} with the
output activation left at tanh, and `model.output_activation` in {relu, linear} with a tanh
candidate (Greff found the output activation necessary when the cell state is unbounded). Each
setting is tuned over configs/study.py's learning rates with seed 0 and then run with its 5 seeds
at the chosen rate; every setting is paired by seed against the canonical tanh cell with the same
cell_clip. The rest is configs/study.py's setting for the same dataset. An unbounded activation lets
the cell state and h grow without limit, and the language model carries its state from batch to
batch, so divergence (a non-finite loss stops the run with status `diverged`) is part of the
result: the report counts diverged runs, and a rate at which a tuning run diverged is never
chosen.

Cost: 10 settings x (4 tuning runs, 5 on mnist1d, + 4 more seeds) = 80 runs on ptb (90 on
mnist1d) of the 2-layer size of configs/study.py, about 110 s each on ptb and 55 s on mnist1d
(`cell_clip` takes the reference path, slower): ~2.6 and ~1.4 core-hours.
"""
from configs import study

ACTIVATIONS = ['tanh', 'relu', 'linear']
CELL_CLIPS = [None, 3.0]
SEPARATED = ['relu', 'linear']  # the candidate's or the output's activation alone, the other tanh


def get_config(arg='ptb'):
  c = study.get_config(arg)
  c.model.num_layers = 2
  c.model.between = 'none'
  return c


def get_sweep(arg='ptb'):
  grid = study.get_sweep(arg)  # checks the argument
  separated = ([{'model.candidate_activation': a} for a in SEPARATED]
               + [{'model.output_activation': a} for a in SEPARATED])
  return {'axes': {'model.activation': ACTIVATIONS, 'model.cell_clip': CELL_CLIPS},
          'extra': separated, 'seeds': grid['seeds'], 'tune': grid['tune'],
          'compare': {'setting': {'model.activation': 'tanh', 'model.candidate_activation': None,
                                  'model.output_activation': None},
                      'by': ['model.cell_clip']}}
