"""The trainer: data, task models, the loop, checkpoints, metrics, sweeps and reports; and
`load_run`, the way other code uses a trained run."""
from train.run import Run, load_run
from train.trainer import train_and_evaluate

__all__ = ['Run', 'load_run', 'train_and_evaluate']
