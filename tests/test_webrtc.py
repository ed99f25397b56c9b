"""The WebRTC transport's server half (mmdemo.webrtc): a Python WebRTC client on this machine sends a
face video and speech as media tracks; the session reads them and the results come back over the
data channel. No browser (tests/test_browser.py has the browser test)."""

from __future__ import annotations

import asyncio
import fractions
import json

import numpy as np
import pytest

from mmdemo.audio import resample
from tests.media import astronaut, speech_16k

av = pytest.importorskip("av")
pytest.importorskip("aiortc")


def test_audio_frames_of_every_layout_become_mono_float():
    from mmdemo.webrtc import audio_samples

    x = (np.sin(np.linspace(0, 20, 960)) * 16000).astype(np.int16)
    packed = av.AudioFrame.from_ndarray(np.stack([x, x]).T.reshape(1, -1), format="s16", layout="stereo")
    packed.sample_rate = 48000
    mono, sr = audio_samples(packed)
    assert sr == 48000 and mono.shape == (960,) and np.allclose(mono, x / 32768.0, atol=1e-6)
    planar = av.AudioFrame.from_ndarray(np.stack([x, x]).astype(np.float32) / 32768.0, format="fltp", layout="stereo")
    planar.sample_rate = 16000
    mono2, sr2 = audio_samples(planar)
    assert sr2 == 16000 and np.allclose(mono2, mono, atol=1e-6)


def _packets(frames, seq0=65530, ts0=0):
    """RTP packets of video frames (a list of payload lists), the last packet of each frame marked;
    sequence numbers wrap around 65535 on the way."""
    from aiortc.rtp import RtpPacket

    out, seq = [], seq0
    for k, payloads in enumerate(frames):
        for j, data in enumerate(payloads):
            p = RtpPacket(payload_type=96, marker=int(j == len(payloads) - 1), sequence_number=seq % 65536, timestamp=ts0 + 3000 * k)
            p._data = data
            out.append(p)
            seq += 1
    return out


def _feed(buf, packets):
    """What the buffer hands on: (index of the packet that completed it, data, timestamp) each."""
    out = []
    for i, p in enumerate(packets):
        _, f = buf.add(p)
        if f is not None:
            out.append((i, f.data, f.timestamp))
    return out


def _padding(after, seq):
    """An empty packet with the timestamp of a frame already sent (browsers pad video this way)."""
    from aiortc.rtp import RtpPacket

    p = RtpPacket(payload_type=96, marker=0, sequence_number=seq % 65536, timestamp=after.timestamp)
    p._data = b""
    return p


def test_a_video_frame_is_handed_on_with_its_last_packet():
    from aiortc.jitterbuffer import JitterBuffer

    from mmdemo.webrtc import _frame_on_marker_buffer

    def ours():
        return _frame_on_marker_buffer()(capacity=128, is_video=True)

    pk = _packets([[b"a1", b"a2", b"a3"], [b"b1"], [b"c1", b"c2"], [b"d1", b"d2"]])  # sequence numbers wrap on the way
    # aiortc's own: each frame only when the next one begins; ours: the first frames so too (where
    # a frame starts is known once one has left), then each at its marked packet
    assert _feed(JitterBuffer(capacity=128, is_video=True), pk) == [(3, b"a1a2a3", 0), (4, b"b1", 3000), (6, b"c1c2", 6000)]
    assert _feed(ours(), pk) == [(3, b"a1a2a3", 0), (4, b"b1", 3000), (5, b"c1c2", 6000), (7, b"d1d2", 9000)]

    # reordered: the marked packet before the middle one; the frame leaves when it is whole
    a = _packets([[b"w1"], [b"x1", b"x2", b"x3"], [b"y1"]])
    assert _feed(ours(), [a[0], a[1], a[3], a[2], a[4]]) == [(1, b"w1", 0), (3, b"x1x2x3", 3000), (4, b"y1", 6000)]

    # a lost packet: the broken frame is never handed on early (aiortc's rule, its NACKs and its
    # buffer-full handling take it from there)
    a = _packets([[b"w1"], [b"x1", b"x2", b"x3"], [b"y1", b"y2"], [b"z1"]])
    assert _feed(ours(), [a[0], a[1], a[3], a[4], a[5], a[6]]) == [(1, b"w1", 0)]  # x2 lost


def test_padding_and_late_packets_never_make_a_frame():
    """Browsers pad video with empty packets of the last frame's timestamp: after that frame left,
    they must not become an (empty) frame, which would end the decoder's stream; a packet far out
    of order (aiortc then restarts its buffer there) must not be handed on again."""
    from mmdemo.webrtc import _frame_on_marker_buffer

    def ours():
        return _frame_on_marker_buffer()(capacity=128, is_video=True)

    w, x = _packets([[b"w1"], [b"x1"]])
    pad = _padding(x, x.sequence_number + 1)
    y = _packets([[b"y1", b"y2"]], seq0=x.sequence_number + 2)
    for p in y:
        p.timestamp = 6000
    want = [(1, b"w1", 0), (2, b"x1", 3000), (4, b"y1y2", 6000)]
    assert _feed(ours(), [w, x, pad, y[0], y[1]]) == want
    assert _feed(ours(), [w, x, y[0], pad, y[1]]) == want

    # padding that arrives after the next frame is whole: dropped, and that frame leaves at once
    f = _packets([[b"f0"], [b"f1"]], seq0=100)
    g = _packets([[b"g0", b"g1"]], seq0=103, ts0=6000)
    assert _feed(ours(), [f[0], f[1], g[0], g[1], _padding(f[1], 102)]) == [(1, b"f0", 0), (2, b"f1", 3000), (4, b"g0g1", 6000)]

    # a late copy of an early packet of a long keyframe, just after the keyframe left: ignored
    # (aiortc would take it for a stream restart, clear its buffer and stall)
    key = _packets([[b"a"], [b"k%d" % i for i in range(150)]], seq0=1000)
    after = _packets([[b"n1"], [b"n2"], [b"n3"]], seq0=1151, ts0=6000)
    got = _feed(_frame_on_marker_buffer()(capacity=512, is_video=True), key + [key[11]] + after)  # aiortc's size for video
    assert [d for _, d, _ in got] == [b"a", b"".join(b"k%d" % i for i in range(150)), b"n1", b"n2", b"n3"]

    frames = _packets([[f"f{k}".encode()] for k in range(150)])
    late = frames[20]  # a retransmission 129 packets late
    got = _feed(ours(), frames + [late] + _packets([[b"g1"], [b"g2"]], seq0=frames[-1].sequence_number + 1))
    assert [d for _, d, _ in got[:149]] == [f"f{k}".encode() for k in range(149)]
    assert b"f20" not in [d for _, d, _ in got[149:]]


def test_the_pinned_aiortc_takes_the_faster_jitter_buffer():
    """If an aiortc upgrade moves its receiver's buffer, this fails instead of the app silently
    keeping the frame interval of delay."""
    from aiortc import RTCPeerConnection

    from mmdemo.webrtc import _frame_on_marker_buffer, hand_frames_on_at_once

    async def go():
        pc = RTCPeerConnection()
        try:
            video = pc.addTransceiver("video", direction="recvonly")
            audio = pc.addTransceiver("audio", direction="recvonly")
            assert hand_frames_on_at_once(video.receiver)
            assert isinstance(video.receiver._RTCRtpReceiver__jitter_buffer, _frame_on_marker_buffer())
            assert not hand_frames_on_at_once(video.receiver)  # once
            assert not hand_frames_on_at_once(audio.receiver)  # audio keeps its own
        finally:
            await pc.close()

    asyncio.run(go())


def _bridge():
    from mmdemo.webrtc import RtcBridge

    return RtcBridge(lambda session, up, src: {"src": src, "pred": up.prediction, "present": up.present, "face_ms": up.timings_ms.get("face")},
                     max_connections=2)


def test_bad_offers_are_refused_with_a_reason(engine_cpu):
    from mmdemo.webrtc import RtcError

    bridge, session = _bridge(), engine_cpu.session("weighted")

    async def go():
        for bad in (None, {}, {"type": "answer", "sdp": "v=0"}, {"type": "offer", "sdp": 3}, {"type": "offer", "sdp": "x" * 70000}):
            with pytest.raises(RtcError):
                await bridge.answer(bad, session)
        with pytest.raises(RtcError, match="could not be answered"):
            await bridge.answer({"type": "offer", "sdp": "v=0\r\nnot sdp at all\r\n"}, session)
        assert not bridge.links  # nothing kept of a refused offer

    asyncio.run(go())


@pytest.fixture(scope="module")
def engine_cpu():
    from mmdemo.pipeline import DEFAULT_CHECKPOINTS, Engine

    engine = Engine(DEFAULT_CHECKPOINTS, device="cpu")
    engine.warmup("weighted")  # as the app does before its first session
    return engine


@pytest.mark.slow
@pytest.mark.parametrize("face_apart", [True, False])
def test_a_client_streams_face_and_speech_and_gets_results(engine_cpu, tmp_path, face_apart):
    from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

    from mmdemo.webrtc import _frame_on_marker_buffer

    face = np.ascontiguousarray(astronaut()[::2, ::2])
    speech = (resample(np.concatenate([speech_16k(tmp_path), np.zeros(16000, np.float32)]), 16000, 48000) * 32767).astype(np.int16)

    class Camera(VideoStreamTrack):
        async def recv(self):
            pts, time_base = await self.next_timestamp()
            frame = av.VideoFrame.from_ndarray(face, format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    class Microphone(AudioStreamTrack):
        pos = 0

        async def recv(self):
            await asyncio.sleep(0.02)
            n = 960
            chunk = np.take(speech, np.arange(self.pos, self.pos + n), mode="wrap")
            self.pos += n
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, self.pos, fractions.Fraction(1, 48000)
            return frame

    from dataclasses import replace

    bridge, session = _bridge(), engine_cpu.session("weighted")
    session.cfg = replace(session.cfg, face_apart=face_apart)
    messages: list[dict] = []

    async def go():
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = client.createDataChannel("results")
        channel.on("message", lambda m: messages.append(json.loads(m)))
        client.addTrack(Camera())
        client.addTrack(Microphone())
        await client.setLocalDescription(await client.createOffer())
        answer = await bridge.answer({"sdp": client.localDescription.sdp, "type": "offer"}, session)
        # the server's video receiver hands frames on with their last packet (swapped on the track event)
        (link,) = bridge.links
        buffers = {t.kind: type(t.receiver._RTCRtpReceiver__jitter_buffer) for t in link.pc.getTransceivers()}
        assert buffers["video"] is _frame_on_marker_buffer() and buffers["audio"] is not _frame_on_marker_buffer()
        await client.setRemoteDescription(RTCSessionDescription(**answer))
        for _ in range(400):  # at most 40 s on a slow machine
            frames = [m for m in messages if m["src"] == "frame"]
            if len(frames) >= 15 and any(m["present"]["audio"] for m in messages):
                break
            await asyncio.sleep(0.1)
        stats = bridge.stats()
        # Stop: the server reads no more media and answers with the session's last update
        channel.send(json.dumps({"stop": True}))
        for _ in range(100):
            if any(m["src"] == "stopped" for m in messages):
                break
            await asyncio.sleep(0.1)
        n_stopped = len(messages)
        await asyncio.sleep(0.5)
        after_stop = messages[n_stopped:]
        await client.close()
        for _ in range(150):  # the server sees the hang-up, tells the session, then forgets the link
            if not bridge.links and session.reasons["audio"] == "microphone stopped":
                break
            await asyncio.sleep(0.1)
        await bridge.close()
        return stats, after_stop

    stats, after_stop = asyncio.run(go())
    frames = [m for m in messages if m["src"] == "frame"]
    assert len(frames) >= 15, (len(messages), stats)
    assert all(isinstance(m["pts"], int) and m["size"][0] > 0 and m["recv"] > 0 for m in frames)
    assert frames[-1]["present"]["vision"]  # the face was read from the video track
    faces = [m for m in messages if m["src"] == "face"]
    if face_apart:  # no frame's update waited for the face models; each face read sent its own update
        assert all(m["face_ms"] is None for m in frames)
        assert faces and all(m["face_ms"] > 0 and m["present"]["vision"] for m in faces)
        read = {m["pts"] for m in frames if m["face_read"]}
        assert {m["face_pts"] for m in faces} <= read and len(faces) >= len(read) - 1  # the last may be cut by Stop
    else:  # a frame's update came after its face was read, when one was due
        assert not faces and any(m["face_ms"] for m in frames)
    assert any(m["present"]["audio"] for m in messages)  # and the voice from the audio track
    assert stats[0]["frames_in"] >= stats[0]["frames_done"] >= 15  # frames that came while busy were skipped, never queued
    (last,) = [m for m in messages if m["src"] == "stopped"]
    assert not last["present"]["vision"] and not last["present"]["audio"]  # Stop: camera and microphone stopped
    assert after_stop == []  # and nothing after it, though the client still sent media
    assert not bridge.links  # the client hung up: the connection is gone ...
    assert session.egemaps is None and session.reasons["audio"] == "microphone stopped"  # ... and the session heard it


def test_face_reads_apart_send_an_update_only_when_it_tells_something(engine_cpu):
    """With no face in view every frame's face is read; those reads send nothing while no face is
    shown (the frames' updates say as much); a face, and the face going away, are sent."""
    from mmdemo.webrtc import _Link

    class Channel:
        readyState = "open"
        sent: list = []

        def send(self, message):
            self.sent.append(json.loads(message))

    bridge, session = _bridge(), engine_cpu.session("weighted")
    link = _Link(bridge, None, session)
    link.channel = Channel()
    black, face = np.zeros((240, 320, 3), np.uint8), np.ascontiguousarray(astronaut()[::2, ::2])

    async def go():
        for t, img in ((0.0, black), (0.1, black), (1.0, face), (2.0, black), (2.1, black)):
            await link.read_face(img, t, session.camera_runs, int(t * 1000), 0.0, [320, 240])
        await bridge.close()

    asyncio.run(go())
    assert [(m["face_pts"], m["present"]["vision"]) for m in link.channel.sent] == [(1000, True), (2000, False)]


def test_a_connection_that_never_comes_up_is_dropped(engine_cpu):
    from aiortc import RTCConfiguration, RTCPeerConnection

    from mmdemo.webrtc import RtcBridge

    bridge = RtcBridge(lambda s, u, src: {}, connect_timeout_s=0.5)
    session = engine_cpu.session("weighted")

    async def go():
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # offers a data channel, then never answers the server's ICE checks
        client.createDataChannel("results")
        await client.setLocalDescription(await client.createOffer())
        sdp = client.localDescription.sdp
        await client.close()
        await bridge.answer({"sdp": sdp, "type": "offer"}, session)
        assert len(bridge.links) == 1
        for _ in range(100):
            if not bridge.links:
                break
            await asyncio.sleep(0.1)
        assert not bridge.links

    asyncio.run(go())


def test_the_signalling_route_refuses_what_it_should(tmp_path):
    """POST /mmdemo/rtc/offer (app.py --transport webrtc): only a page's own session token opens a
    connection; no body, a huge body, not JSON, an unknown token: refused with a reason."""
    import app as studio_app
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mmdemo.pipeline import DEFAULT_CHECKPOINTS

    studio = studio_app.Studio(DEFAULT_CHECKPOINTS, "cpu", data_dir=tmp_path, transport="webrtc")
    web = FastAPI()
    studio.mount_rtc(web)
    client = TestClient(web)
    url = "/mmdemo/rtc/offer"
    assert client.post(url, content=b"").status_code == 413
    assert client.post(url, content=b"x" * (studio_app.MAX_OFFER_BYTES + 1)).status_code == 413
    r = client.post(url, content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post(url, json={"token": "0" * 32, "sdp": "v=0", "type": "offer"})
    assert r.status_code == 404 and "reload" in r.json()["error"]
    session = studio.engine.session("weighted")
    token = studio.rtc_token(session)
    r = client.post(url, json={"token": token, "sdp": "v=0\r\n", "type": "offer"})  # a known session, a useless offer
    assert r.status_code == 400 and "no media" in r.json()["error"]
    with pytest.raises(ValueError):
        studio_app.Studio(DEFAULT_CHECKPOINTS, "cpu", data_dir=tmp_path, transport="carrier-pigeon")


def test_audio_after_stop_or_far_behind_is_not_kept_without_limit(engine_cpu):
    """After the page's Stop nothing is processed, so nothing is kept (a client could send for
    hours); while a chunk is being processed the audio waiting for it is bounded."""
    from aiortc.mediastreams import MediaStreamError

    from mmdemo.webrtc import MAX_PENDING_S, _Link

    x = np.zeros(960, np.int16)

    class Track:  # 60 s of 20 ms frames at 48 kHz, then the end of the stream
        def __init__(self, n=3000):
            self.n = n

        async def recv(self):
            if self.n == 0:
                raise MediaStreamError
            self.n -= 1
            f = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
            f.sample_rate = 48000
            return f

    bridge = _bridge()
    stopped = _Link(bridge, None, engine_cpu.session("weighted"))
    stopped.stopping = True
    behind = _Link(bridge, None, engine_cpu.session("weighted"))
    behind.audio_busy = True  # the previous chunk never finishes

    async def go():
        await stopped.run_audio(Track())
        await behind.run_audio(Track())
        await bridge.close()

    asyncio.run(go())
    assert stopped.audio == []
    kept = sum(len(a) for a in behind.audio) / 48000
    assert MAX_PENDING_S - 0.1 <= kept <= MAX_PENDING_S + 0.1


def _connect(bridge, session, client, channel_messages):
    """Offers ``client``'s tracks and a data channel to ``bridge`` and completes the handshake."""
    from aiortc import RTCSessionDescription

    async def go():
        channel = client.createDataChannel("results")
        channel.on("message", lambda m: channel_messages.append(json.loads(m)))
        await client.setLocalDescription(await client.createOffer())
        answer = await bridge.answer({"sdp": client.localDescription.sdp, "type": "offer"}, session)
        await client.setRemoteDescription(RTCSessionDescription(**answer))
        return channel

    return go()


async def _until(check, seconds: float) -> bool:
    for _ in range(int(seconds * 10)):
        if check():
            return True
        await asyncio.sleep(0.1)
    return check()


def test_a_connection_whose_media_stops_is_stopped_with_a_reason_and_its_slot_freed(engine_cpu):
    """A page left open whose camera went away (the track sends nothing more, the connection stays
    up) holds no slot for ever: after idle_timeout_s the page is told why, and when it does not hang
    up, the connection is closed after stop_grace_s; the session hears that its camera stopped."""
    from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack

    from mmdemo.webrtc import RtcBridge

    face = np.ascontiguousarray(astronaut()[::4, ::4])
    frozen = asyncio.Event()

    class Camera(VideoStreamTrack):
        sent = 0

        async def recv(self):
            if self.sent >= 10:
                frozen.set()
                await asyncio.Event().wait()  # nothing more, ever; the connection stays up
            self.sent += 1
            pts, time_base = await self.next_timestamp()
            frame = av.VideoFrame.from_ndarray(face, format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    bridge = RtcBridge(lambda s, u, src: {"src": src, "present": u.present}, connect_timeout_s=20, idle_timeout_s=3.0, stop_grace_s=1.0)
    session = engine_cpu.session("weighted")
    messages: list[dict] = []

    async def go():
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        client.addTrack(Camera())
        await _connect(bridge, session, client, messages)
        assert await _until(lambda: frozen.is_set() and any(m["src"] == "frame" for m in messages), 30)
        assert len(bridge.links) == 1
        assert await _until(lambda: any(m["src"] == "stopped" for m in messages), 10)
        (last,) = [m for m in messages if m["src"] == "stopped"]
        assert "no video or audio" in last["why"] and not last["present"]["vision"]
        assert await _until(lambda: not bridge.links, 10)  # the client never hung up: the server did
        await client.close()
        await bridge.close()

    asyncio.run(go())
    assert session.reasons["vision"] == "camera stopped"


def test_a_page_that_pressed_stop_but_never_hangs_up_is_closed(engine_cpu):
    from aiortc import RTCConfiguration, RTCPeerConnection

    from mmdemo.webrtc import RtcBridge

    bridge = RtcBridge(lambda s, u, src: {"src": src}, connect_timeout_s=20, idle_timeout_s=600, stop_grace_s=1.0)
    session = engine_cpu.session("weighted")
    messages: list[dict] = []

    async def go():
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = await _connect(bridge, session, client, messages)
        assert await _until(lambda: channel.readyState == "open", 30)
        channel.send(json.dumps({"stop": True}))
        assert await _until(lambda: any(m["src"] == "stopped" for m in messages), 10)
        assert [m for m in messages if m["src"] == "stopped"][0].get("why") is None  # the page's own Stop: no reason added
        assert len(bridge.links) == 1
        assert await _until(lambda: not bridge.links, 10)
        await client.close()
        await bridge.close()

    asyncio.run(go())
