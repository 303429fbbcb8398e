"""Greff et al. 2017 ("LSTM: A Search Space Odyssey") on this project's speech dataset: which parts
of the LSTM cell matter?

  python -m train.sweep --config=configs/variants.py --sweep_dir=results/variants_speech/runs
  python -m train.report --sweep_dir=results/variants_speech/runs --out=results/variants_speech

One point by hand:

  python main.py --config=configs/variants.py --workdir=runs/x --config.model.coupled_gates=True \
      --config.optimizer.learning_rate=0.01 --config.seed=1

Arms (Greff's names): vanilla (the LSTM with peepholes, Greff's baseline), NIG (no input gate,
i = 1), NFG (no forget gate, f = 1), NOG (no output gate, o = 1), NIAF (no input activation: the
candidate is linear), NOAF (no output activation: h = o * c), NP (no peepholes), CIFG (coupled
input and forget gate, i = 1 - f). FGR (full gate recurrence) is not built. Each is vanilla with
one change. The data is configs/study.py's speech dataset (bidirectional, CTC, held-out validation
and test voices; label error rate), at 2 layers; the protocol is the study's: every arm tuned
over configs/study.py's learning rates with seed 0, then SEEDS at its chosen rate, each arm
paired by seed against vanilla.

Cost: 8 arms x (6 tuning runs + 4 more seeds) = 80 runs of about 1.5-2.5 min (1,000 steps; NIG,
NFG and NOG take the reference path, the others the fast path; measured: 100-150 s each while
other jobs shared the machine): about 2.4 core-hours (measured: 108 s per run on average).
"""
from configs import study

SEEDS = [0, 1, 2, 3, 4]  # 3 first; 5 as in the study once 3 had left most intervals a few points wide
VARIANTS = {  # Greff's name -> the change from vanilla
    'NIG': {'model.input_gate': False},
    'NFG': {'model.forget_gate': False},
    'NOG': {'model.output_gate': False},
    'NIAF': {'model.candidate_activation': 'linear'},
    'NOAF': {'model.output_activation': 'linear'},
    'NP': {'model.peephole': False},
    'CIFG': {'model.coupled_gates': True},
}


def get_config(arg=None):
  c = study.get_config('speech')
  c.model.num_layers = 2
  c.model.peephole = True  # Greff's vanilla LSTM has peepholes
  return c


def get_sweep(arg=None):
  return {'extra': [{'model.peephole': True}, *VARIANTS.values()],
          'seeds': SEEDS, 'tune': {'optimizer.learning_rate': study.LEARNING_RATES['speech']},
          'compare': {'setting': {'model.peephole': True, 'model.input_gate': True,
                                  'model.forget_gate': True, 'model.output_gate': True,
                                  'model.candidate_activation': None,
                                  'model.output_activation': None,
                                  'model.coupled_gates': False}}}
