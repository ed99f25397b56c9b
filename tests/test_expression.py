"""mmdemo's own expression CNN: it learns, reads lighting changes alike, saves and loads strictly, and
the face encoder uses it when given its weights."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from mmdemo import expression as ex
from mmdemo.encoders.face import FER_CLASSES, FaceEncoder, expression_crop

HAPPY, SAD, NEUTRAL = (FER_CLASSES.index(c) for c in ("happy", "sad", "neutral"))


def cartoon_faces(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """48x48 grey drawn faces at random places, sizes, lighting and noise: a mouth curved up
    (happy), down (sad) or straight (neutral)."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for i in range(n):
        label = (HAPPY, SAD, NEUTRAL)[i % 3]
        bg, skin = rng.uniform(20, 90), rng.uniform(140, 230)
        img = np.full((48, 48), bg, np.float32)
        cx, cy, r = 24 + rng.integers(-3, 4), 24 + rng.integers(-3, 4), rng.integers(15, 20)
        cv2.ellipse(img, (int(cx), int(cy)), (int(r), int(r * 1.15)), 0, 0, 360, float(skin), -1)
        for dx in (-r // 2.5, r // 2.5):
            cv2.circle(img, (int(cx + dx), int(cy - r // 3)), 2, 10.0, -1)
        my, w = int(cy + r // 2), int(r // 2)
        if label == NEUTRAL:
            cv2.line(img, (int(cx - w), my), (int(cx + w), my), 10.0, 2)
        else:  # happy: the lower half of an ellipse (a smile); sad: the upper half
            cv2.ellipse(img, (int(cx), my - (3 if label == HAPPY else -3)), (w, 5), 0, 0 if label == HAPPY else 180,
                        180 if label == HAPPY else 360, 10.0, 2)
        img = img * rng.uniform(0.6, 1.2) + rng.normal(0, 6, img.shape)
        imgs.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(label)
    return np.stack(imgs), np.array(labels)


SMALL = ex.ExpressionConfig(width=8, epochs=6, batch_size=32, lr=5e-3, seed=0, device="cpu")


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(2)
    x, y = cartoon_faces(480, seed=1)
    vx, vy = cartoon_faces(120, seed=2)
    net, info = ex.train_expression(ex.to_input(x), y, ex.to_input(vx), vy, SMALL, progress=False)
    return net, info


def test_the_network_learns_drawn_expressions_it_never_saw(trained):
    net, info = trained
    tx, ty = cartoon_faces(150, seed=3)
    p = ex.predict_proba(net, ex.to_input(tx))
    assert p.shape == (150, len(FER_CLASSES)) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.mean(p.argmax(1) == ty) > 0.8
    # the chosen epoch is the best on valid, and the history says so
    assert info["valid_accuracy7"] == max(h["valid_accuracy7"] for h in info["history"])
    assert info["chosen_epoch"] == max(info["history"], key=lambda h: h["valid_accuracy7"])["epoch"]
    pol = ex.polarity_of(p)
    truth = np.where(ty == HAPPY, 1, np.where(ty == SAD, -1, 0))
    assert np.mean(pol == truth) > 0.8


def test_darker_or_brighter_light_reads_the_same(trained):
    net, _ = trained
    x = ex.to_input(cartoon_faces(30, seed=4)[0])
    p = ex.predict_proba(net, x)
    # a gain and an offset that keep the pixels inside [0, 1]: the standardised crop is unchanged
    q = ex.predict_proba(net, x * 0.6 + 0.1)
    assert np.abs(p - q).max() < 1e-3


def test_augmentation_is_reproducible_and_stays_an_image():
    x = ex.to_input(cartoon_faces(8, seed=5)[0])
    a = ex.augment(x, torch.Generator().manual_seed(7))
    b = ex.augment(x, torch.Generator().manual_seed(7))
    c = ex.augment(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert 0.01 < float((a - x).abs().mean()) < 0.3  # changed, but still the same picture


def test_to_input_sizes_and_rejects_bad_shapes():
    assert ex.to_input(np.zeros((64, 64), np.uint8)).shape == (1, 1, 48, 48)
    assert ex.to_input(np.full((3, 30, 30), 255, np.uint8)).shape == (3, 1, 48, 48)
    assert float(ex.to_input(np.full((48, 48), 255, np.uint8)).max()) == 1.0
    with pytest.raises(ValueError, match="grey crops"):
        ex.to_input(np.zeros((2, 3, 48, 48), np.uint8))


def test_saved_weights_load_strictly_and_predict_the_same(trained, tmp_path):
    net, info = trained
    ex.save_expression(net, tmp_path, SMALL, {"note": "test"})
    back = ex.load_expression(tmp_path / ex.WEIGHTS)
    x = ex.to_input(cartoon_faces(20, seed=6)[0])
    assert np.abs(ex.predict_proba(net, x) - ex.predict_proba(back, x)).max() < 5e-3  # fp16 weights
    meta = json.loads((tmp_path / ex.CONFIG).read_text())
    assert meta["format"] == ex.FORMAT and meta["classes"] == list(FER_CLASSES) and meta["config"]["width"] == 8
    # a foreign config, a missing config, or weights of another shape: refused with the reason
    (tmp_path / ex.CONFIG).write_text(json.dumps(meta | {"classes": ["a", "b"]}))
    with pytest.raises(ValueError, match="classes"):
        ex.load_expression(tmp_path)
    (tmp_path / ex.CONFIG).write_text(json.dumps(meta | {"config": dict(meta["config"], width=16)}))
    with pytest.raises(RuntimeError, match="size mismatch"):
        ex.load_expression(tmp_path)
    (tmp_path / ex.CONFIG).unlink()
    with pytest.raises(ValueError, match="no readable"):
        ex.load_expression(tmp_path)


def test_polarity_groups_the_negative_expressions():
    p = np.zeros((4, 7))
    p[0, FER_CLASSES.index("happy")] = 1
    p[1, [FER_CLASSES.index(c) for c in ("angry", "fear", "sad")]] = 0.3  # 0.9 negative in all
    p[1, FER_CLASSES.index("happy")] = 0.1
    p[2, FER_CLASSES.index("neutral")] = 0.6
    p[2, FER_CLASSES.index("surprise")] = 0.4
    p[3, FER_CLASSES.index("surprise")] = 0.7  # surprise is in no group: the rest decides
    p[3, FER_CLASSES.index("happy")] = 0.2
    p[3, FER_CLASSES.index("sad")] = 0.1
    assert ex.polarity_of(p).tolist() == [1, -1, 0, 1]


def write_fer_folder(root, per_split: int = 12):
    folder = root / "fer2013-faces"
    rows = []
    for split, seed in (("train", 1), ("valid", 2), ("test", 3)):
        x, y = cartoon_faces(per_split, seed)
        for i, (img, lab) in enumerate(zip(x, y)):
            name = FER_CLASSES[lab]
            path = f"images/{split}/{name}/{i}.jpg"
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / path), img)
            rows.append({"clip_id": f"{split}/{i}", "path": path, "emotion": name,
                         "polarity": {"happy": "1", "sad": "-1", "neutral": "0"}[name], "split": split})
    (folder / "images" / "train" / "broken.jpg").write_bytes(b"not a jpeg")
    rows.append({"clip_id": "train/broken", "path": "images/train/broken.jpg", "emotion": "sad", "polarity": "-1", "split": "train"})
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


def test_fer2013_is_read_by_split_and_broken_images_are_counted(tmp_path):
    folder = write_fer_folder(tmp_path)
    d = ex.read_fer2013(folder, progress=False)
    assert set(d) == {"train", "valid", "test"}
    assert d["train"]["images"].shape == (12, 48, 48) and d["train"]["unreadable"] == 1
    assert set(d["test"]["polarity"]) <= {-1.0, 0.0, 1.0}
    assert len(ex.read_fer2013(folder, limit_per_split=5, progress=False)["valid"]["images"]) == 5


def test_the_command_trains_and_writes_weights_and_scores(tmp_path, capsys):
    write_fer_folder(tmp_path)
    out = tmp_path / "out"
    assert ex.main(["--data", str(tmp_path), "--out", str(out), "--epochs", "1", "--width", "4", "--device", "cpu", "--quiet"]) == 0
    meta = json.loads((out / ex.CONFIG).read_text())
    assert meta["fer2013_test"]["n"] == 12 and "photos_test" not in meta  # no photos folder here
    assert (out / ex.WEIGHTS).exists() and "fer2013_test: 7-class accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ex.main(["--data", str(tmp_path / "nowhere"), "--out", str(out)])


def test_the_crop_is_a_square_around_the_box_cut_at_the_frame():
    grey = np.zeros((100, 200), np.uint8)
    grey[20:60, 50:90] = 200  # the face box
    crop = expression_crop(grey, (50, 20, 90, 60))
    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    assert crop[32, 32] == 200 and crop[0, 0] == 0  # the margin around the box is in the crop
    assert expression_crop(grey, (190, 90, 260, 160)).shape == (64, 64)  # partly outside: what is inside
    assert expression_crop(grey, (300, 300, 340, 340)) is None


@pytest.mark.slow
def test_the_face_encoder_reads_with_the_given_cnn(trained, tmp_path):
    from tests.media import astronaut

    net, _ = trained
    ex.save_expression(net, tmp_path, SMALL, {})
    img = astronaut()
    fer = FaceEncoder(keep_crop=True).encode(img)
    own = FaceEncoder(expression=tmp_path / ex.WEIGHTS).encode(img)
    assert fer.present and own.present and "crop" not in own.info
    crop = fer.info["crop"]
    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    # the same face, blendshapes and pose; the expression part is this network's reading of the crop
    assert np.allclose(fer.feature[:55], own.feature[:55])
    want = ex.predict_proba(ex.load_expression(tmp_path), ex.to_input(crop))[0]
    assert np.allclose(own.feature[55:], want, atol=1e-5)
    assert own.info["expression"] == FER_CLASSES[int(np.argmax(want))]
    missing = FaceEncoder(expression=tmp_path / "nothing.safetensors").encode(img)
    assert not missing.present and "unavailable" in missing.reason
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / ex.WEIGHTS).write_bytes(b"\x00" * 100)
    (damaged / ex.CONFIG).write_text((tmp_path / ex.CONFIG).read_text())
    broken = FaceEncoder(expression=damaged / ex.WEIGHTS).encode(img)
    assert not broken.present and "not a usable expression CNN" in broken.reason
