"""The live face signal over time: a moving average that starts again after a gap, an expression
label with hysteresis."""

import numpy as np
import pytest

from mmdemo.smoothing import FeatureSmoother, LabelHysteresis, changes_per_second

LABELS = ("happy", "sad", "neutral")


def test_the_average_damps_frame_noise_and_follows_a_real_change():
    rng = np.random.default_rng(0)
    sm = FeatureSmoother(tau_s=0.35, gap_s=0.5)
    t = np.arange(0, 5, 0.1)
    raw = 0.5 + rng.normal(0, 0.2, (len(t), 4))
    out = np.array([sm.push(x, ti) for x, ti in zip(raw, t)])
    assert out[10:].std(axis=0).max() < 0.6 * raw[10:].std(axis=0).min()  # ~0.38x expected at 10 frames/s
    # a step (a new expression) is followed within about a second
    step = np.array([sm.push(np.full(4, 2.0), 5 + k * 0.1) for k in range(1, 11)])
    assert step[-1].min() > 1.9 and step[0].max() < 1.5


def test_frame_rate_does_not_change_the_time_constant():
    a, b = FeatureSmoother(0.35), FeatureSmoother(0.35)
    a.push(np.zeros(1), 0.0)
    b.push(np.zeros(1), 0.0)
    for k in range(1, 11):  # 1 s at 10 frames/s
        va = a.push(np.ones(1), k * 0.1)
    for k in range(1, 31):  # 1 s at 30 frames/s (stays under the gap)
        vb = b.push(np.ones(1), k / 30)
    assert va[0] == pytest.approx(vb[0], abs=1e-5)


def test_starts_again_after_the_face_is_lost():
    sm = FeatureSmoother(0.35, gap_s=0.5)
    sm.push(np.zeros(3), 0.0)
    sm.lost(0.2)  # a missed frame: keep the average
    assert sm.value is not None
    np.testing.assert_allclose(sm.push(np.ones(3), 0.3), 1 - np.exp(-0.3 / 0.35), rtol=1e-5)
    sm.lost(1.0)  # the first frame without the face: not yet gone
    assert sm.value is not None
    sm.lost(1.6)  # frames without it for longer than the gap
    assert sm.value is None
    np.testing.assert_array_equal(sm.push(np.full(3, 5.0), 1.7), 5.0)  # a new face is not averaged with the old one
    np.testing.assert_array_equal(sm.push(np.full(3, 7.0), 3.8), 7.0)  # no face read for longer than stall_s (2 s) too


def test_reads_far_apart_keep_the_average_and_one_missed_detection_does_not_end_it():
    # a loaded CPU reads the face every 0.8 s, longer than the face's time-to-live: the face was
    # never seen gone, so the average carries on (it restarted at every read before)
    sm = FeatureSmoother(0.7, gap_s=0.5, stall_s=2.0)
    sm.push(np.zeros(2), 0.0)
    out = sm.push(np.ones(2), 0.8)
    assert not sm.restarted
    np.testing.assert_allclose(out, 1 - np.exp(-0.8 / 0.7), rtol=1e-5)
    sm.lost(1.6)  # one read without a face, 0.8 s after the last face
    assert sm.value is not None
    sm.push(np.ones(2), 2.4)
    assert not sm.restarted
    # frames that show no face for longer than gap_s end it, however often they come
    for t in (2.5, 2.7, 2.9):
        sm.lost(t)
    assert sm.value is not None  # 0.4 s without a face since the first faceless frame
    sm.lost(3.1)
    assert sm.value is None
    with pytest.raises(ValueError):
        FeatureSmoother(0.7, gap_s=0.5, stall_s=0.4)


def test_the_label_does_not_flicker_between_near_ties():
    h = LabelHysteresis(LABELS, margin=0.15)
    rng = np.random.default_rng(1)
    shown = []
    for k in range(50):  # happy and sad within a few points of each other, alternating leads
        p = np.array([0.45, 0.40, 0.15]) if k % 2 else np.array([0.40, 0.45, 0.15])
        shown.append(h.push(p + rng.normal(0, 0.01, 3)))
    raw = [LABELS[int(np.argmax(p))] for p in [np.array([0.45, 0.40, 0.15]) if k % 2 else np.array([0.40, 0.45, 0.15]) for k in range(50)]]
    assert changes_per_second(raw, 5.0) > 9
    assert changes_per_second(shown, 5.0) == 0
    before = shown[-1]
    clear = {"happy": np.array([0.1, 0.1, 0.8]), "sad": np.array([0.8, 0.1, 0.1])}[before]  # clearly another one
    assert h.push(clear) != before  # a clear change goes through at once
    h.reset()
    assert h.push(np.array([0.34, 0.33, 0.33])) == "happy"  # after a reset the first reading is shown
    with pytest.raises(ValueError):
        h.push(np.array([0.5, 0.5]))


def test_changes_per_second():
    assert changes_per_second(["a", "a", "b", "b", "a"], 2.0) == 1.0
    with pytest.raises(ValueError):
        changes_per_second(["a"], 0)


def test_replay_reads_at_most_every_interval_and_carries_the_average_between_reads():
    from mmdemo.smoothing import replay_face

    feats = [np.full(2, float(k)) for k in range(10)]
    seen = replay_face(feats, 10, tau_s=0.0, interval_s=0.2, gap_s=0.5)  # no smoothing: the last read
    # a frame 0.1 s after a read is not read (nor one 0.2 s after, where k / 10 rounds below 0.2, as live)
    assert [float(x[0]) for x in seen] == [0, 0, 2, 2, 4, 4, 4, 7, 7, 9]
    # a frame without a face is not counted, and the next frame is read at once
    feats[4] = None
    seen = replay_face(feats, 10, tau_s=0.0, interval_s=0.2, gap_s=0.5)
    assert [float(x[0]) for x in seen] == [0, 0, 2, 2, 5, 5, 5, 8, 8]
    # read less often than the face counts as present: the frames in between, past that, have no face
    seen = replay_face([np.zeros(2)] * 10, 10, tau_s=0.0, interval_s=0.5, gap_s=0.25)
    assert len(seen) == 6  # frames 0-2 and 5-7


def test_steady_share_counts_videos_whose_reading_holds_and_leaves_out_faceless_ones():
    from mmdemo.smoothing import steady_share

    steady = [np.zeros(3) for _ in range(20)]
    jumpy = [np.zeros(3) if k < 10 else np.ones(3) for k in range(20)]  # the reading jumps by 1
    faceless = [None] * 15 + [np.zeros(3)] * 5  # a face in 25% of the frames: left out

    def read(x):
        return x[:, 0]

    kw = {"tau_s": 0.0, "interval_s": 0.0, "gap_s": 0.5}
    assert steady_share(read, [steady, jumpy, faceless], 10, **kw) == 0.5
    # the live average damps the jump below ±0.3 only with a long time constant
    assert steady_share(read, [jumpy], 10, **(kw | {"tau_s": 5.0})) == 1.0
    with pytest.raises(ValueError, match="80%"):
        steady_share(read, [faceless], 10, **kw)


def test_steady_faces_draw_from_the_split_asked_for_with_each_polarity(tmp_path):
    from mmdemo.smoothing import steady_faces

    rows = ["path,split,polarity"] + [f"{s}{k}.jpg,{s},{k % 3 - 1}" for s in ("train", "valid", "test") for k in range(12)] + ["x.jpg,valid,"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    got = steady_faces(tmp_path, 6, seed=0, split="valid")
    assert len(got) == 6 and all(p.name.startswith("valid") for p in got)
    assert steady_faces(tmp_path, 6, seed=0, split="valid") == got  # seeded
    assert sorted(int(p.stem[5:]) % 3 for p in got) == [0, 0, 1, 1, 2, 2]  # two of each polarity
    # images excluded (copies of training images) are never drawn
    skip = {f"valid{k}.jpg" for k in range(0, 12, 2)}
    got = steady_faces(tmp_path, 12, seed=0, split="valid", exclude=skip)
    assert got and not {p.name for p in got} & skip


def test_copies_of_train_finds_held_out_images_with_a_training_image_s_pixels(tmp_path):
    import cv2

    from mmdemo.data import copies_of_train

    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(3))
    files = {"train/a.png": a, "train/b.png": b, "test/a_again.png": a, "test/c.png": c, "valid/b_again.png": b,
             "valid/b_shifted.png": np.roll(b, 1, axis=0)}
    for name, img in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), img)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = ["path,split"] + [f"{n},{n.split('/')[0]}" for n in files] + ["broken.png,test"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert copies_of_train(tmp_path) == {"test/a_again.png", "valid/b_again.png"}


def test_the_label_lets_go_of_a_class_that_sank_below_spread_out_others():
    labels = tuple("abcdefg")
    h = LabelHysteresis(labels, margin=0.15)
    assert h.push(np.array([0.7] + [0.05] * 6)) == "a"
    # "a" is now the least likely class; the others share the rest evenly, none leads it by 0.15
    spread = np.array([0.10] + [0.15] * 6)
    assert h.push(spread) == "b"
    # and near ties at low probabilities still hold (0.14 is within 70% of 0.17)
    assert h.push(np.array([0.13, 0.14, 0.17, 0.14, 0.14, 0.14, 0.14])) == "b"
    # probabilities a baseline offset took below 0: only the absolute margin decides
    assert h.push(np.array([-0.02, -0.05, -0.03, -0.04, -0.04, -0.04, -0.04])) == "b"
