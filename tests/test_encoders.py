"""Real encoders on real media (slow: loads MediaPipe, fer, openSMILE, Silero, MiniLM, Whisper)."""

import csv
import threading

import cv2
import numpy as np
import pytest

from mmdemo.audio import resample
from mmdemo.encoders import DIMS, FaceEncoder, StreamingVAD, Transcriber, VoiceEncoder, WordsEncoder, speech_probs
from mmdemo.encoders.face import BLENDSHAPES, FER_CLASSES

from tests.media import SENTENCE, SHARED, astronaut, speech_16k, wer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def face():
    return FaceEncoder()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_16k(tmp_path_factory.mktemp("speech"))


# ---------------------------------------------------------------- face


def test_astronaut_face_is_found_smiling_and_boxed(face):
    img = astronaut()
    r = face.encode(img)
    assert r.present and r.feature.shape == (DIMS["vision"],) and np.isfinite(r.feature).all()
    x0, y0, x1, y1 = r.info["box"]
    assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
    assert 40 < x1 - x0 < 250  # her face, not the whole photo
    assert r.info["smile"] > 0.5 and r.info["expression"] == "happy"
    probs = r.info["expression_probs"]
    assert set(probs) == set(FER_CLASSES) and abs(sum(probs.values()) - 1) < 1e-4
    assert len(face.feature_names()) == DIMS["vision"] and face.feature_names()[:3] == list(BLENDSHAPES[:3])


def test_any_frame_size_and_layout(face):
    img = astronaut()
    for frame in (cv2.resize(img, (1280, 1280)), img[:, :, 0], np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]), img.astype(np.float32) / 255):
        r = face.encode(frame)
        assert r.present, r.reason
    small = face.encode(img[:12, :12])
    assert not small.present and "too small" in small.reason
    thumb = face.encode(cv2.resize(img[20:260, 110:350], (60, 60)))  # a thumbnail is enlarged, not refused
    assert thumb.present, thumb.reason
    # a thin strip, enlarged like a thumbnail, would pass the face model's image size limit, which
    # aborts the whole process (no exception to catch): it is refused before
    for shape in ((16, 4000, 3), (6000, 32, 3)):
        strip = face.encode(np.full(shape, 128, np.uint8))
        assert not strip.present and "too narrow" in strip.reason


def test_blank_black_and_faceless_frames_are_absent(face):
    assert face.encode(np.zeros((480, 640, 3), np.uint8)).reason == "the camera delivers black frames"
    r = face.encode(np.full((480, 640, 3), 128, np.uint8))
    assert not r.present and r.reason == "no face in the frame"
    assert not face.encode(np.zeros((4, 4, 4, 4))).present


def test_several_faces_use_the_largest(face):
    head = astronaut()[20:260, 110:350]  # her head and shoulders
    canvas = np.full((480, 900, 3), 90, np.uint8)
    canvas[20:420, 480:880] = cv2.resize(head, (400, 400))  # large
    canvas[40:340, 20:320] = cv2.resize(head, (300, 300))  # small
    r = face.encode(canvas)
    assert r.present and r.info["faces"] == 2
    assert r.info["box"][0] > 480  # the box is on the large copy
    assert any("largest" in n for n in r.info["notes"])


@pytest.mark.skipif(not (SHARED / "facial-expressions-muxspace").exists(), reason="../shared/data not present")
def test_happy_photos_smile_more_than_neutral_ones(face):
    from mmdemo.media import read_image

    folder = SHARED / "facial-expressions-muxspace"
    rows = list(csv.DictReader(open(folder / "labels.csv")))
    smiles = {"happiness": [], "neutral": []}
    for row in rows:
        if row["split"] == "test" and row["emotion"] in smiles and len(smiles[row["emotion"]]) < 25:
            r = face.encode(read_image(folder / row["path"]))
            if r.present:
                smiles[row["emotion"]].append((r.info["smile"], r.info["expression_probs"]["happy"]))
    happy, neutral = np.array(smiles["happiness"]), np.array(smiles["neutral"])
    assert len(happy) >= 15 and len(neutral) >= 15
    assert happy[:, 0].mean() > neutral[:, 0].mean() + 0.2  # smile blendshape
    assert happy[:, 1].mean() > neutral[:, 1].mean()  # fer's happy probability


# ---------------------------------------------------------------- voice


def test_speech_is_detected_and_described(speech):
    r = VoiceEncoder().encode(speech)
    assert r.present and r.feature.shape == (DIMS["audio"],) and np.isfinite(r.feature).all()
    assert r.info["speech_s"] > 2.0


def test_silence_and_noise_are_absent():
    enc = VoiceEncoder()
    silent = enc.encode(np.zeros(16000 * 2, np.float32))
    assert not silent.present and silent.reason.startswith("silence")
    hum = enc.encode((0.0005 * np.sin(np.arange(32000) / 5)).astype(np.float32))  # a quiet hum
    assert not hum.present and hum.reason.startswith("silence (level")
    noise = enc.encode(np.random.default_rng(0).normal(0, 0.05, 16000 * 2).astype(np.float32))
    assert not noise.present and "no speech" in noise.reason
    assert not enc.encode(np.zeros(100, np.float32)).present


def test_clipping_is_reported(speech):
    r = VoiceEncoder().encode(np.clip(speech * 30, -1, 1))
    assert any("clipping" in n for n in r.info["notes"])


def test_streaming_vad_equals_the_whole_signal_vad(speech):
    x = np.concatenate([speech, np.zeros(9000, np.float32), speech])
    vad = StreamingVAD()
    chunks = [vad.push(x[i : i + 7919]) for i in range(0, len(x), 7919)]  # odd chunk size on purpose
    probs = np.concatenate([p for _, p in chunks])
    frames = np.concatenate([f for f, _ in chunks])
    whole = speech_probs(x)
    assert np.allclose(probs, whole[: len(probs)], atol=1e-5)
    assert np.array_equal(frames, x[: len(frames)])
    assert (whole > 0.5).mean() > 0.5


# ---------------------------------------------------------------- words


def test_words_embeddings_are_normalised_and_meaningful():
    enc = WordsEncoder()
    a, b, c = (enc.encode(t).feature for t in ("I love this film, it is wonderful", "What a great and lovely movie", "The tax form is due in April"))
    assert a.shape == (DIMS["text"],) and abs(np.linalg.norm(a) - 1) < 1e-4
    assert a @ b > a @ c  # similar sentences are closer
    batch, reasons = enc.encode_batch(["I love this film, it is wonderful", "", "🙂🙂"])
    assert np.allclose(batch[0], a, atol=1e-5) and reasons[0] == ""
    assert reasons[1] == "no text" and "emoji" in reasons[2]


def test_bad_text_is_absent_or_noted():
    enc = WordsEncoder()
    assert enc.encode("").reason == "no text"
    assert enc.encode(None).reason == "no text"
    assert "emoji" in enc.encode("😀😀😀 !!!").reason
    huge = enc.encode("great " * 5000)
    assert huge.present and any("first 256 tokens" in n for n in huge.info["notes"])
    assert enc.encode("Très bien, 很好").present  # any script counts as words


def test_one_text_model_serves_many_threads():
    """The MiniLM instance is shared by every session. Its tokenizer keeps truncation/padding
    settings as state: concurrent sessions must not corrupt each other's calls ("Already
    borrowed", or a batch tokenized with another call's settings)."""
    from types import SimpleNamespace

    import torch

    from mmdemo.encoders.words import MiniLM

    m = MiniLM(device="cpu")
    texts = ["great movie " * n for n in range(1, 300, 13)]
    expected = m.embed(texts[:6])
    real = m.model

    class Instant(torch.nn.Module):  # the tokenizer is the shared state under test: skip the slow forward
        def forward(self, input_ids, attention_mask, **kw):
            return SimpleNamespace(last_hidden_state=torch.ones(*input_ids.shape, 384))

    errors = []

    def work(k):
        try:
            for i in range(150):
                t = texts[(i * 7 + k) % len(texts)]
                m.truncated(t) if k % 2 else m.embed([t, "short"])
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    m.model = Instant()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    [t.start() for t in threads], [t.join() for t in threads]
    m.model = real
    assert not errors, errors[:3]
    # the real model from several threads gives what one thread gives
    out = {}
    threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, m.embed(texts[:6]))) for k in range(4)]
    [t.start() for t in threads], [t.join() for t in threads]
    assert all(np.allclose(v, expected, atol=1e-5) for v in out.values())
    assert m.dtype == "float32"


def test_whisper_transcribes_espeak_speech(speech):
    text = Transcriber().transcribe(speech)
    assert wer(SENTENCE, text) < 0.25, text
    assert Transcriber().transcribe(np.zeros(800, np.float32)) == ""


def test_audio_formats_and_rates_convert(speech):
    from mmdemo.audio import AudioError, check_rate, to_mono_float

    x48 = resample(speech, 16000, 48000)
    stereo = (np.stack([x48, x48], axis=1) * 32767).astype(np.int16)
    mono = resample(to_mono_float(stereo), 48000)
    assert abs(len(mono) - len(speech)) <= 2
    assert VoiceEncoder().encode(mono).present
    for bad in (0, -1, 1_000_000, "abc", None):
        with pytest.raises(AudioError):
            check_rate(bad)
