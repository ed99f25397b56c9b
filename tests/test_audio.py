"""Audio conversion: streaming resampling equals one-shot resampling, chunk by chunk."""

import numpy as np
import pytest

from mmdemo.audio import AudioRing, StreamResampler, resample


def _signal(sr: int, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    noise = np.random.default_rng(0).normal(0, 0.05, t.size)
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t) + noise).astype(np.float32)


def _stream(x: np.ndarray, sr: int, chunk: int) -> tuple[np.ndarray, StreamResampler]:
    r = StreamResampler(sr)
    return np.concatenate([r(x[i : i + chunk]) for i in range(0, len(x), chunk)]), r


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("chunk", [4096, 4800])
def test_streaming_equals_one_shot(sr, chunk):
    """No click at chunk borders: every streamed sample equals the one-shot resampling of the whole
    signal (the old resampler computed each chunk's last samples against zero padding: up to 8% of
    the amplitude of a sine)."""
    x = _signal(sr)
    whole = resample(x, sr)
    y, r = _stream(x, sr, chunk)
    assert np.abs(y - whole[: len(y)]).max() < 1e-5
    tail = r.flush()
    assert np.abs(np.concatenate([y, tail]) - whole).max() < 1e-5


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("chunk", [4096, 4800, 1001])
def test_no_drift_whatever_the_chunk_length(sr, chunk):
    """3 s in gives 3 s out (48,000 samples at 16 kHz) up to the fixed filter delay, however the
    input is cut (4,096-sample chunks at 48 kHz used to give 48,024); after a flush, exactly."""
    x = _signal(sr)
    y, r = _stream(x, sr, chunk)
    assert 48000 - 16 <= len(y) <= 48000
    assert len(y) + len(r.flush()) == 48000
    # the count after every chunk follows the input exactly: never ahead, at most the delay behind
    r2, got = StreamResampler(sr), 0
    for i in range(0, len(x), chunk):
        got += len(r2(x[i : i + chunk]))
        due = min(len(x), i + chunk) * 16000 / sr
        assert due - 16 <= got <= due + 1e-9


def test_same_rate_passes_through_and_empty_chunks_are_fine():
    x = _signal(16000, 0.5)
    r = StreamResampler(16000)
    assert np.array_equal(r(x), x) and r.flush().size == 0
    r = StreamResampler(48000)
    assert r(np.zeros(0, np.float32)).size == 0
    assert r(np.ones(2, np.float32)).size == 0  # not enough input yet for an output: nothing is invented


def test_ring_keeps_the_last_seconds():
    ring = AudioRing(1.0)
    ring.push(np.arange(20000, dtype=np.float32))
    assert ring.filled == 16000 and ring.last()[-1] == 19999 and ring.last(0.5)[0] == 12000


@pytest.mark.parametrize("reader", ["audio", "image", "frames"])
def test_missing_empty_and_folder_paths_say_what_is_wrong(tmp_path, reader):
    from mmdemo.media import MediaError, iter_frames, read_audio, read_image

    read = {"audio": read_audio, "image": read_image, "frames": lambda p: next(iter_frames(p))}[reader]
    ext = {"audio": ".wav", "image": ".png", "frames": ".mp4"}[reader]
    empty = tmp_path / f"empty{ext}"
    empty.write_bytes(b"")
    folder = tmp_path / f"folder{ext}"
    folder.mkdir()
    for path, why in ((tmp_path / f"missing{ext}", "no such file"), (empty, "the file is empty"), (folder, "not a file")):
        with pytest.raises(MediaError, match=why):
            read(path)
    junk = tmp_path / f"junk{ext}"
    junk.write_bytes(b"hello")
    with pytest.raises(MediaError) as info:  # not empty: the decoder's own reason
        read(junk)
    assert "the file is empty" not in str(info.value)
    assert str(tmp_path) not in str(info.value)  # the file's name, not the server's (or Gradio's temporary) folder


def test_an_upload_that_did_not_finish_is_called_damaged_not_an_audio_problem(tmp_path):
    from mmdemo.media import MediaError, read_audio
    from tests.media import espeak, video

    clip = video(tmp_path / "talk.mp4", audio=espeak(tmp_path / "s.wav"), seconds=2.0, size=160)
    cut = tmp_path / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: half a file has none
    with pytest.raises(MediaError, match="cut.mp4: the file is damaged or incomplete") as info:
        read_audio(cut)
    assert str(tmp_path) not in str(info.value)


def test_an_audio_file_whose_header_gives_a_nonsense_rate_is_refused(tmp_path):
    """40 samples whose header says 1 Hz would otherwise become 40 s of audio."""
    import soundfile as sf

    from mmdemo.media import MediaError, read_audio

    sf.write(tmp_path / "odd.wav", np.zeros(40, np.float32), 1)
    with pytest.raises(MediaError, match="sample rate 1 Hz"):
        read_audio(tmp_path / "odd.wav")
    sf.write(tmp_path / "fine.wav", np.zeros(8000, np.float32), 8000)
    assert len(read_audio(tmp_path / "fine.wav")) == 16000


def test_an_odd_rate_gets_a_filter_of_bounded_size_and_stream_and_one_shot_still_agree():
    """A rate sharing almost no factor with 16 kHz (a client's WAV header can say anything) would
    need a filter of millions of taps; it is read as the nearest multiple of 100 Hz instead, while
    every common rate keeps its exact ratio."""
    from mmdemo.audio import MAX_FACTOR, AudioError, check_rate, ratio

    assert ratio(44100) == (160, 441) and ratio(11025) == (640, 441) and ratio(48000) == (1, 3) and ratio(44056) == (2000, 5507)
    for sr in (383993, 383987, 16001, 4001, 99991):
        up, down = ratio(sr)
        assert max(up, down) <= MAX_FACTOR and abs(16000 * down / up - sr) <= 50
        assert getattr(StreamResampler(sr), "taps", 0) <= 2 * 10 * MAX_FACTOR + 1  # 16001 Hz: read as 16 kHz, no filter
    x = np.random.default_rng(0).normal(size=10000).astype(np.float32)
    r = StreamResampler(383987)
    np.testing.assert_allclose(np.concatenate([r(x[:3000]), r(x[3000:]), r.flush()]), resample(x, 383987), atol=1e-5)
    for bad in (float("inf"), float("nan"), "fast"):
        with pytest.raises(AudioError):
            check_rate(bad)


def test_an_ffmpeg_that_hangs_gives_a_media_error_not_a_crash(tmp_path, monkeypatch):
    import subprocess

    from mmdemo import media

    def hang(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw.get("timeout"))

    path = tmp_path / "clip.m4a"
    path.write_bytes(b"\x00" * 100)
    monkeypatch.setattr(media.subprocess, "run", hang)
    with pytest.raises(media.MediaError, match="10 minutes"):
        media._ffmpeg_audio(path)


def test_python_ints_are_read_as_the_pcm_they_hold():
    from mmdemo.audio import to_mono_float

    tone = (12000 * np.sin(np.linspace(0, 20 * np.pi, 1600))).astype(np.int16)
    want = to_mono_float(tone)
    as_ints = np.asarray([int(v) for v in tone])  # what np.asarray([...]) makes of a list of Python ints: int64
    assert as_ints.dtype == np.int64
    assert np.allclose(to_mono_float(as_ints), want)  # not 2**48 times quieter (read as silence)
    wide = tone.astype(np.int32) * 65536
    assert np.allclose(to_mono_float(wide.astype(np.int64)), to_mono_float(wide), atol=1e-6)
    assert np.allclose(to_mono_float(tone.astype(np.int32)), tone / 2**31)  # a real int32 stream keeps its own scale
