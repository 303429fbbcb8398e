"""The trainer: data, the models and their objectives, the loop, the workdir, metrics, sweeps and
reports; and `load_run`, the way other code uses a trained run."""
from train.run import Run, load_run
from train.trainer import train_and_evaluate

__all__ = ['Run', 'load_run', 'train_and_evaluate']
