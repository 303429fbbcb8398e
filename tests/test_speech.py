"""Tests for train/speech.py: espeak-ng audio, log-mel features, the digit dataset and its cache."""
import os
import sys

import numpy as np
import pytest

from configs import common
from train import data, speech


def f0(audio):
  """Median pitch (Hz) of the loud frames, from the autocorrelation peak in 60..400 Hz."""
  x = audio.astype(np.float64)
  win, hop = 1024, 512
  frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
  loud = frames[(frames ** 2).mean(axis=1) > 0.3 * (frames ** 2).mean(axis=1).max()]
  lo, hi = speech.SAMPLE_RATE // 400, speech.SAMPLE_RATE // 60
  pitches = []
  for frame in loud:
    frame = frame - frame.mean()
    ac = np.correlate(frame, frame, mode='full')[win - 1:]
    pitches.append(speech.SAMPLE_RATE / (lo + np.argmax(ac[lo:hi])))
  return float(np.median(pitches))


def mean_spectrum(audio):
  return speech.log_mel(speech.trim_silence(audio)).mean(axis=0)


# ------------------------------------------------------------------------------------------------
# Synthesis


def test_audio_is_int16_nonsilent_and_grows_with_the_text():
  assert speech.engine() is speech.engine()  # initialised once
  assert speech.SAMPLE_RATE == 22050
  one = speech.synthesize('seven')
  five = speech.synthesize('three one four one five')
  for audio in (one, five):
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert np.abs(audio.astype(np.int32)).max() > 3000
  assert len(five) > 2 * len(one)
  assert 0.3 * speech.SAMPLE_RATE < len(one) < 2 * speech.SAMPLE_RATE


def test_rate_pitch_and_voice_change_the_audio():
  text = 'two nine six'
  assert len(speech.synthesize(text, rate=300)) < 0.8 * len(speech.synthesize(text, rate=150))
  assert f0(speech.synthesize(text, pitch=90)) > 1.2 * f0(speech.synthesize(text, pitch=10))
  assert f0(speech.synthesize(text, 'gmw/en+f3')) > 1.4 * f0(speech.synthesize(text, 'gmw/en'))
  # Two renditions by one voice are close (espeak keeps a little state between calls); other
  # accents are further away.
  base = mean_spectrum(speech.synthesize(text, 'gmw/en-US'))
  again = np.linalg.norm(base - mean_spectrum(speech.synthesize(text, 'gmw/en-US')))
  for voice in ('gmw/en-GB-scotland', 'gmw/en-029', 'gmw/en-US+f3'):
    assert np.linalg.norm(base - mean_spectrum(speech.synthesize(text, voice))) > 3 * again + 0.1


def test_voices_of_this_build():
  voices = speech.english_voices()
  for voice in ('gmw/en', 'gmw/en-US', 'gmw/en-GB-scotland', 'gmw/en-GB-x-rp', 'gmw/en-029'):
    assert voice in voices
  assert {'f1', 'f3', 'm3', 'm7'} <= set(speech.voice_variants())
  for voice in speech.TRAIN_VOICES + speech.TEST_VOICES + speech.VALID_VOICES:
    assert len(speech.synthesize('one', voice)) > 0
  with pytest.raises(ValueError, match='not in this espeak-ng build'):
    speech.synthesize('one', 'en-gb')
  with pytest.raises(ValueError, match='no variant'):
    speech.synthesize('one', 'gmw/en+nosuchvariant')


def test_missing_library_names_the_package(monkeypatch):
  import espeakng_loader
  monkeypatch.setattr(espeakng_loader, 'get_library_path', lambda: '/nonexistent/libespeak-ng.so')
  with pytest.raises(RuntimeError, match='pip install espeakng-loader'):
    speech.Espeak()
  monkeypatch.setitem(sys.modules, 'espeakng_loader', None)  # import fails
  with pytest.raises(RuntimeError, match='pip install espeakng-loader'):
    speech.Espeak()


# ------------------------------------------------------------------------------------------------
# Features


def test_mel_filterbank_is_nonnegative_and_covers_the_band():
  bank = speech.mel_filterbank(40, 1024, speech.SAMPLE_RATE, 0.0, 8000.0)
  assert bank.shape == (40, 513) and bank.dtype == np.float32
  assert (bank >= 0).all() and bank.max() <= 1.0
  assert (bank.sum(axis=1) > 0).all()                          # no empty filter
  freqs = np.arange(513) * speech.SAMPLE_RATE / 1024
  inside = (freqs > 30) & (freqs < 7950)
  assert (bank[:, inside].sum(axis=0) > 0).all()              # no gap in the band
  assert (bank[:, freqs >= 8000] == 0).all()
  peaks = freqs[bank.argmax(axis=1)]
  assert (np.diff(peaks) > 0).all()                           # centres rise
  assert np.diff(peaks)[-1] > 5 * np.diff(peaks)[0]           # mel: wider at the top
  with pytest.raises(ValueError):
    speech.mel_filterbank(200, 256)                           # narrower than a bin


def test_log_mel_shape_and_post_processing():
  audio = speech.synthesize('four two')
  fc = speech.FeatureConfig()
  assert (fc.window, fc.hop, fc.n_fft) == (551, 220, 1024)
  feats = speech.log_mel(audio)
  assert feats.shape == (1 + (len(audio) - 551) // 220, 40) and feats.dtype == np.float32
  assert np.isfinite(feats).all()
  assert speech.log_mel(audio, speech.FeatureConfig(energy=True)).shape == (len(feats), 41)
  assert speech.log_mel(np.zeros(100, np.int16)).shape == (1, 40)  # floor, not -inf
  assert np.isfinite(speech.log_mel(np.zeros(100, np.int16))).all()
  norm = speech.normalize(feats)
  np.testing.assert_allclose(norm.mean(axis=0), 0, atol=1e-4)
  np.testing.assert_allclose(norm.std(axis=0), 1, atol=1e-3)
  assert speech.add_deltas(norm, 2).shape == (len(feats), 120)
  ramp = np.arange(10, dtype=np.float32)[:, None]
  np.testing.assert_allclose(speech.deltas(ramp)[2:-2], 1.0)   # slope of a ramp
  stacked = speech.stack_frames(ramp, 3)
  assert stacked.shape == (4, 3)
  np.testing.assert_array_equal(stacked[0], [0, 1, 2])
  np.testing.assert_array_equal(stacked[-1], [9, 9, 9])        # last frame repeated


# ------------------------------------------------------------------------------------------------
# Dataset and cache

SMALL = dict(num_train=6, num_valid=2, num_test=3, min_digits=1, max_digits=4, seed=3)


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('speech_cache'))


@pytest.fixture(scope='module')
def small(cache_dir):
  return speech.make_digit_dataset(**SMALL, subsample=2, cache_dir=cache_dir)


def test_dataset_splits(small):
  assert {name: s.size for name, s in small.items()} == {'train': 6, 'valid': 2, 'test': 3}
  t_max = small['train'].features.shape[1]
  for name, s in small.items():
    assert s.features.shape == (s.size, t_max, 80) and s.features.dtype == np.float32
    assert np.isfinite(s.features).all()
    assert s.lengths.dtype == np.int32 and (s.lengths > 0).all() and (s.lengths <= t_max).all()
    for i in range(s.size):
      assert not s.features[i, s.lengths[i]:].any()           # zero padding
      assert s.features[i, s.lengths[i] - 1].any()
    assert s.labels.shape == (s.size, 4) and s.labels.dtype == np.int32
    words = [str(t).split() for t in s.texts]
    np.testing.assert_array_equal(s.label_lengths, [len(w) for w in words])
    assert ((s.label_lengths >= 1) & (s.label_lengths <= 4)).all()
    for i, w in enumerate(words):
      n = s.label_lengths[i]
      assert list(s.labels[i, :n]) == [speech.DIGIT_WORDS.index(x) for x in w]
      assert (s.labels[i, n:] == speech.LABEL_PAD).all()
    real = s.labels[s.labels != speech.LABEL_PAD]
    assert ((real >= 0) & (real <= 9)).all()
    assert (s.lengths >= s.label_lengths).all()              # CTC can emit every label
  assert max(s.lengths.max() for s in small.values()) == t_max
  train_voices = set(map(str, small['train'].voices)) | set(map(str, small['valid'].voices))
  test_voices = set(map(str, small['test'].voices))
  assert train_voices <= set(speech.TRAIN_VOICES) and test_voices <= set(speech.TEST_VOICES)
  assert not train_voices & test_voices
  assert not set(speech.TRAIN_VOICES) & set(speech.TEST_VOICES)


def test_held_out_validation_voices(small, tmp_path):
  """valid_voices: the valid split hears only them, none of train's or test's; train and test
  draw the same utterances as without them."""
  held_out = speech.make_digit_dataset(**SMALL, subsample=2, cache_dir=str(tmp_path),
                                       valid_voices=speech.VALID_VOICES)
  assert set(map(str, held_out['valid'].voices)) <= set(speech.VALID_VOICES)
  assert not set(speech.VALID_VOICES) & (set(speech.TRAIN_VOICES) | set(speech.TEST_VOICES))
  for name in ('train', 'test'):
    np.testing.assert_array_equal(held_out[name].texts, small[name].texts)
    np.testing.assert_array_equal(held_out[name].voices, small[name].voices)
  np.testing.assert_array_equal(held_out['valid'].texts, small['valid'].texts)


def test_cache_is_reused(small, cache_dir, monkeypatch, tmp_path):
  files = os.listdir(cache_dir)
  assert len(files) == 1 and files[0].startswith('speech_') and files[0].endswith('.npz')

  def no_synthesis(*args, **kwargs):
    raise AssertionError('synthesised although the cache holds this dataset')

  monkeypatch.setattr(speech, 'synthesize', no_synthesis)
  again = speech.make_digit_dataset(**SMALL, subsample=2, cache_dir=cache_dir)
  for name in speech.SPLITS:
    for field in ('features', 'lengths', 'labels', 'label_lengths', 'texts', 'voices'):
      np.testing.assert_array_equal(getattr(again[name], field), getattr(small[name], field))
  # Normalisation, deltas and subsampling are applied on load: no new synthesis either.
  other = speech.make_digit_dataset(**SMALL, subsample=1, delta_order=1,
                                    normalize_features=False, cache_dir=cache_dir)
  assert other['train'].features.shape[2] == 80
  np.testing.assert_array_equal(-(-other['train'].lengths // 2), small['train'].lengths)
  assert os.listdir(cache_dir) == files
  # Anything that changes the audio misses the cache.
  with pytest.raises(AssertionError, match='synthesised'):
    speech.make_digit_dataset(**{**SMALL, 'seed': 4}, cache_dir=cache_dir)
  # The environment variable moves the default cache.
  monkeypatch.setenv(speech.CACHE_ENV, str(tmp_path))
  assert speech.default_cache_dir() == str(tmp_path)
  with pytest.raises(AssertionError, match='synthesised'):
    speech.make_digit_dataset(**SMALL)


def test_valid_and_test_do_not_depend_on_num_train(small, tmp_path):
  bigger = speech.make_digit_dataset(**{**SMALL, 'num_train': 7}, subsample=2,
                                     use_cache=False, cache_dir=str(tmp_path))
  assert os.listdir(tmp_path) == []                            # use_cache=False writes nothing
  for name in ('valid', 'test'):
    np.testing.assert_array_equal(bigger[name].texts, small[name].texts)
    np.testing.assert_array_equal(bigger[name].voices, small[name].voices)
  np.testing.assert_array_equal(bigger['train'].texts[:6], small['train'].texts)


def _speech_config(**fields):
  c = common.base_config()
  c.dataset = 'speech_digits'
  c.data.speech_digits.update(fields)
  return c


def test_load_speech_digits(small, cache_dir):
  from train.data import Dataset
  ds = data.load_dataset(_speech_config(**SMALL, cache_dir=cache_dir, subsample=3, deltas=1,
                                        voices=','.join(speech.TRAIN_VOICES)))
  assert isinstance(ds, Dataset)
  assert (ds.name, ds.kind, ds.num_classes, ds.vocab_size) == ('speech_digits', 'ctc', 10, None)
  assert ds.input_features == 40 * 2 * 3
  assert {name: s.size for name, s in ds.splits.items()} == {'train': 6, 'valid': 2, 'test': 3}
  for name, s in ds.splits.items():
    n, t, f = s.inputs.shape
    assert f == ds.input_features and s.inputs.dtype == np.float32
    assert s.lengths.shape == (n,) and (s.lengths <= t).all()
    assert s.targets.shape == (n, 4) and s.targets.dtype == np.int32
    assert s.weights.shape == (n, 4) and s.weights.dtype == np.float32
    np.testing.assert_array_equal(s.weights.sum(axis=1), small[name].label_lengths)
    np.testing.assert_array_equal(s.targets, small[name].labels)
    assert not s.inputs.flags.writeable
  assert 'speech_digits (ctc)' in ds.describe()
  with pytest.raises(ValueError, match='num_test'):
    data.load_dataset(_speech_config(num_test=0, cache_dir=cache_dir))
