"""The trainer: data, task models, the loop, checkpoints, metrics, sweeps and reports."""
from train.trainer import train_and_evaluate

__all__ = ['train_and_evaluate']
