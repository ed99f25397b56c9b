"""Per-speaker normalisation: a population prior at first, the speaker's own statistics as speech
arrives, and nothing a microphone sends can drag the statistics into nonsense."""

import numpy as np
import pytest

from mmdemo.speaker import Prior, SpeakerNorm, normalise_by_speaker

D = 6


@pytest.fixture
def prior():
    rng = np.random.default_rng(0)
    return Prior.fit(rng.normal(0.0, 1.0, (500, D)))


def speaker(rng, n, offset=3.0, scale=0.5):
    return rng.normal(offset, scale, (n, D))


def test_starts_from_the_prior_and_learns_the_speaker(prior):
    rng = np.random.default_rng(1)
    norm = SpeakerNorm(prior)
    x = speaker(rng, 1)[0]
    z0 = norm.transform(x)
    np.testing.assert_allclose(z0, (x - prior.mean) / prior.std, rtol=1e-5)  # nothing heard yet: the population
    assert norm.speaker_share == 0.0
    for v in speaker(rng, 40):
        norm.update(v)
    assert norm.speaker_share > 0.85
    np.testing.assert_allclose(norm.mean, 3.0 * 40 / (40 + norm.prior_weight), atol=0.3)  # prior worth 4 windows
    # the speaker's typical window now reads as ordinary, not as an extreme
    assert np.abs(norm.transform(speaker(rng, 200)).mean()) < 0.5
    assert np.abs(z0).mean() > 2.0


def test_a_new_session_never_inherits_another_speakers_statistics(prior):
    rng = np.random.default_rng(2)
    a, b = SpeakerNorm(prior), SpeakerNorm(prior)
    for v in speaker(rng, 30):
        a.update(v)
    np.testing.assert_array_equal(b.mean, prior.mean)
    a.reset()
    np.testing.assert_array_equal(a.mean, prior.mean)
    assert a.n == 0 and a.speaker_share == 0.0


def test_outliers_move_the_statistics_a_bounded_amount(prior):
    """A cough, a laugh, music or a second speaker that got past the speech detector: each window
    is clipped to 3 standard deviations of the current estimate before it counts."""
    rng = np.random.default_rng(3)
    norm = SpeakerNorm(prior)
    for v in speaker(rng, 30):
        norm.update(v)
    mean, std = norm.mean, norm.std
    for _ in range(3):
        norm.update(np.full(D, 1e6))  # absurd values (a burst of noise)
    assert np.all(np.abs(norm.mean - mean) < 3 * 3 * std / norm.weight * 1.5)
    assert np.all(np.isfinite(norm.std)) and np.all(norm.std < 10 * std)
    before = norm.mean
    for bad in (np.full(D, np.nan), np.full(D, np.inf), np.zeros(D + 1)):
        norm.update(bad)  # malformed vectors never enter
    np.testing.assert_array_equal(norm.mean, before)


def test_a_second_speaker_shifts_the_statistics_gradually(prior):
    rng = np.random.default_rng(4)
    norm = SpeakerNorm(prior)
    for v in speaker(rng, 60, offset=3.0):
        norm.update(v)
    m0 = norm.mean.copy()
    for v in speaker(rng, 3, offset=-3.0):  # someone else talks for three windows
        norm.update(v)
    shift = np.abs(norm.mean - m0)
    assert np.all(shift < 0.5), shift  # 6 population std away, yet the estimate barely moves


def test_a_ten_minute_session_stays_stable(prior):
    """250 windows of 2.4 s: the weight caps at max_windows, statistics stay finite and track the
    speaker, and std never collapses."""
    rng = np.random.default_rng(5)
    norm = SpeakerNorm(prior, max_windows=60)
    for v in speaker(rng, 250, offset=1.0, scale=0.2):
        norm.update(v)
    assert norm.weight == 60
    np.testing.assert_allclose(norm.mean, 1.0, atol=0.15)
    assert np.all(norm.std >= 0.05 * prior.std)
    assert np.all(np.isfinite(norm.transform(np.zeros(D))))


def test_constant_input_cannot_collapse_the_std(prior):
    norm = SpeakerNorm(prior)
    for _ in range(500):
        norm.update(np.full(D, 0.7))
    assert np.all(norm.std >= 0.05 * prior.std - 1e-12)
    assert np.all(np.abs(norm.transform(np.full(D, 0.7))) < 1e-3)


def test_accept_refuses_silence_clipping_and_overlap():
    assert SpeakerNorm.accept(0.2) != ""  # a cough or a click: too little speech
    assert SpeakerNorm.accept(0.0) != ""  # silence
    assert "clipping" in SpeakerNorm.accept(2.0, clipped_share=0.05)
    assert "overlaps" in SpeakerNorm.accept(2.0, new_audio_s=0.5)
    assert SpeakerNorm.accept(2.0, new_audio_s=2.4) == ""


def test_training_normalisation_uses_only_the_other_clips(prior):
    rng = np.random.default_rng(6)
    x = np.concatenate([speaker(rng, 10, 3.0), speaker(rng, 10, -3.0)])
    spk = np.array(["a"] * 10 + ["b"] * 10)
    z = normalise_by_speaker(x, spk, prior, others="all")
    assert np.abs(z.mean()) < 0.6  # both speakers' baselines removed
    z_first = normalise_by_speaker(x, spk, prior, others=0)
    np.testing.assert_allclose(z_first, (x - prior.mean) / prior.std, rtol=1e-5)  # a session's first window
    # leave-one-out: changing a clip changes the others' statistics, never its own
    x2 = x.copy()
    x2[0] += 1.0
    z2 = normalise_by_speaker(x2, spk, prior, others="all")
    assert np.all(z2[0] > z[0])  # the clip itself moved; its speaker's statistics came from the others
    assert not np.allclose(z2[1], z[1]) and np.allclose(z2[10:], z[10:])
    zr = normalise_by_speaker(x, spk, prior, others="random", seed=1)
    assert zr.shape == x.shape and np.all(np.isfinite(zr))


def test_prior_round_trip_and_bad_priors(prior):
    again = Prior.from_json(prior.to_json())
    np.testing.assert_allclose(again.mean, prior.mean)
    with pytest.raises(ValueError):
        Prior.from_json({"mean": [0, 1], "std": [1, 0]})
    with pytest.raises(ValueError):
        Prior.fit(np.zeros((1, D)))
    with pytest.raises(ValueError):
        Prior.fit(np.full((3, D), np.nan))
    with pytest.raises(ValueError):
        SpeakerNorm(prior).transform(np.zeros(D + 1))  # a feature of another length
    with pytest.raises(ValueError):
        SpeakerNorm(prior, prior_weight=100, max_windows=60)


def test_statistics_can_be_limited_to_a_pool_of_clips(prior):
    rng = np.random.default_rng(7)
    x = speaker(rng, 12, 0.0)
    x[6:] += 2.0  # the speaker's second half sounds different (another mood)
    spk = np.array(["a"] * 12)
    low = normalise_by_speaker(x, spk, prior, others="all", pool=np.arange(12) < 6)
    high = normalise_by_speaker(x, spk, prior, others="all", pool=np.arange(12) >= 6)
    assert np.all(low.mean(axis=1) > high.mean(axis=1))  # statistics from the higher clips read every clip lower
    alone = normalise_by_speaker(x, spk, prior, others="all", pool=np.zeros(12, bool))
    np.testing.assert_allclose(alone, normalise_by_speaker(x, spk, prior, others=0), rtol=1e-6)  # no pool: the prior
    with pytest.raises(ValueError):
        normalise_by_speaker(x, spk, prior, pool=np.ones(3, bool))
