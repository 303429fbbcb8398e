"""The study's check on speech at 8 layers: do the differences hold with every arm at one rate?

  python -m train.sweep --config=configs/study_speech_common_rate.py --sweep_dir=results/study_speech_common_rate/runs
  python -m train.report --sweep_dir=results/study_speech_common_rate/runs --out=results/study_speech_common_rate

configs/study.py:speech tunes each setting's learning rate on seed 0's validation label error,
which is noisy on 300 utterances (seed-to-seed standard deviation 0.8 to 5.9 points at a fixed rate).
At 8 layers with residual connections the tuning stage chose 3e-3 for relu, tanh, gelu and
layernorm between the layers but 3e-2 for between=none (validation 5.50% there against 9.57% at
3e-3, where seed 0's test error was 3.19% against 7.45%), so the paired differences of that group
mix the op's effect with the reference's rate. This check runs the five residual 8-layer arms at
the one rate (COMMON_RATE) four of them chose, with the study's 5 seeds, paired by seed against
between=none. The runs at that rate that the study already has (between=none seed 0 from its
tuning stage; every seed of the other four arms) are the same points with the same config, so the
sweep directory links them (results/study_speech/runs/<name>) instead of running them again; only
between=none's seeds 1-4 at 3e-3 are new. A post-hoc check, reported as such beside the study.

Cost: 4 new runs; they took about 290 s each on one core of the AMD EPYC family 25 model 17 that
another sweep shared (an 8-layer speech run alone on a core takes about 135 s).
"""
from configs import study

COMMON_RATE = 3e-3


def get_config(arg=None):
  del arg
  c = study.get_config('speech')
  c.model.num_layers = 8
  c.model.block = 'residual_op_on_skip'
  c.optimizer.learning_rate = COMMON_RATE
  return c


def get_sweep(arg=None):
  del arg
  return {'extra': [{'model.between': b, 'model.num_layers': 8, 'model.residual': True,
                     'optimizer.learning_rate': COMMON_RATE} for b in study.BETWEEN],
          'seeds': study.SEEDS,
          'compare': {'setting': {'model.between': 'none'}}}
