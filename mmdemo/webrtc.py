"""Live input over WebRTC: the browser sends its camera and microphone as media tracks (aiortc
decodes them here) and gets every update back over a data channel, beside Gradio's HTTP streaming.

Gradio streams a webcam as JPEG uploads through its queue and returns each result over
server-sent events: each frame pays an upload, a queue hop and an event. WebRTC carries the frames
as video (encoded once, paced, no request per frame) and the results over an SCTP data channel on
the same connection. This module is the server half and never imports gradio: :class:`RtcBridge`
answers an SDP offer for one live :class:`~mmdemo.pipeline.Session` and feeds it. Video: only the
newest decoded frame is processed (a frame that arrives while the session is busy replaces the
waiting one), at most ``max_fps`` a second. Audio: 48 kHz Opus decoded to PCM, handed to the
session every ``audio_chunk_s``. With ``PipelineConfig.face_apart`` (the default) a frame's update
does not wait for the face models: a frame whose face is due is read in a thread of its own and
that read sends its own update (``src`` "face"). The pipeline runs in worker threads, never in the
event loop.

``aiortc`` is in requirements.txt. Connections on a LAN or localhost need no
internet; across networks WebRTC needs a STUN/TURN server (not configured here), which is why the
HTTP path stays the default.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .pipeline import Session, Update

log = logging.getLogger(__name__)

MAX_SDP = 64 * 1024  # an SDP offer from a browser is a few kB
MAX_PENDING_S = 10.0  # audio kept while the previous chunk is processed; beyond it (the machine far behind) the oldest goes


class RtcError(ValueError):
    """A bad offer (shown to the caller)."""


def audio_samples(frame) -> tuple[np.ndarray, int]:
    """Mono float32 in [-1, 1] and the sample rate of a decoded av.AudioFrame (packed or planar,
    int16 or float)."""
    raw = frame.to_ndarray()
    channels = len(frame.layout.channels)
    x = raw.reshape(channels, -1).T if frame.format.is_planar else raw.reshape(-1, channels)
    x = x.astype(np.float32)
    if np.issubdtype(raw.dtype, np.integer):
        x /= 32768.0
    return x.mean(axis=1), int(frame.sample_rate)


@functools.cache
def _frame_on_marker_buffer():
    """aiortc's video jitter buffer, handing each frame on as soon as its last packet is in.

    aiortc (1.16) knows a video frame is complete only when a packet of the *next* frame arrives,
    so every frame waits one frame interval (33 ms at 30 frames/s) before it is decoded. The RTP
    marker bit is set on the last packet of each video frame (RFC 7741 for VP8, RFC 6184 for
    H.264): this buffer hands a frame on when the packets from where the next frame must start up
    to a packet with the marker bit are all in and all of one frame. Anything else is left to
    aiortc's own rule, unchanged: the first frame, a gap (loss, reordering), and whatever follows
    aiortc's resets (a packet far out of order, a full buffer), until aiortc's rule has handed a
    frame on again. Packets of a frame already handed on (browsers pad the video stream with
    empty packets of the last frame's timestamp) are dropped, and an empty frame is never handed
    on (an empty packet would end the decoder's stream)."""
    from aiortc.jitterbuffer import JitterBuffer, JitterFrame
    from aiortc.utils import uint16_add

    class FrameOnMarker(JitterBuffer):
        _start = None  # sequence number where the next frame starts (known after a frame left)
        _handed = None  # RTP timestamp of the last frame handed on

        def add(self, packet):
            if (self._handed is not None and self._origin is not None and packet.timestamp == self._handed
                    and 0 < uint16_add(self._origin, -packet.sequence_number) < 32768):
                return False, None  # a late copy of the frame just handed on (aiortc might restart its buffer there)
            pli, frame = super().add(packet)
            while True:
                if frame is None:
                    self._drop_handed()
                    frame = self._first_complete()
                    if frame is None:
                        return pli, None
                self._handed, self._start = frame.timestamp, self._origin
                self._drop_handed()
                if frame.data:
                    return pli, frame
                frame = None  # padding that aiortc's rule made a frame: dropped; a whole frame behind it may leave now

        def _drop_handed(self):
            while self._handed is not None and self._origin is not None:
                p = self._packets[self._origin % self.capacity]
                if p is None or p.timestamp != self._handed:
                    return
                self.remove(1)
                self._start = self._origin

        def _first_complete(self):
            if self._origin is None or self._origin != self._start:
                return None
            packets = []
            for count in range(self.capacity):
                p = self._packets[(self._origin + count) % self.capacity]
                if p is None or (packets and p.timestamp != packets[0].timestamp):
                    return None  # a gap, or the first frame's end was lost: aiortc's rule decides
                packets.append(p)
                if p.marker:
                    self.remove(count + 1)
                    return JitterFrame(data=b"".join(x._data for x in packets), timestamp=packets[0].timestamp)
            return None

    return FrameOnMarker


def hand_frames_on_at_once(receiver) -> bool:
    """Gives a video receiver :func:`_frame_on_marker_buffer`'s jitter buffer (before any packet
    arrives). Returns False, leaving aiortc's own, when this aiortc keeps its buffer elsewhere."""
    from aiortc.jitterbuffer import JitterBuffer

    attr = "_RTCRtpReceiver__jitter_buffer"  # private to aiortc: checked, never assumed
    old = getattr(receiver, attr, None)
    if type(old) is not JitterBuffer or not old._is_video or old._origin is not None:
        return False
    setattr(receiver, attr, _frame_on_marker_buffer()(capacity=old.capacity, is_video=True))
    return True


class _Link:
    """One browser's connection: its peer connection, session, data channel and pending media."""

    def __init__(self, bridge: RtcBridge, pc, session: Session):
        self.bridge, self.pc, self.session = bridge, pc, session
        self.channel = None
        self.latest = None  # the newest video frame not yet processed
        self.video_busy = False
        self.face_busy = False  # a face is being read apart from the frames (PipelineConfig.face_apart)
        self.face_shown = False  # the last face update sent had a face
        self.last_video = 0.0
        self.audio: list[np.ndarray] = []
        self.audio_rate = 48000
        self.audio_busy = False
        self.last_audio_key, self.last_audio_sent = None, 0.0
        self.tasks: set[asyncio.Task] = set()
        self.frames_in = self.frames_done = 0
        self.closed = False
        self.stopping = False  # the page pressed Stop: no more media is read or reported
        self.stopped_at: float | None = None  # time.monotonic() of the Stop
        self.last_media = time.monotonic()  # of the last video or audio frame received (or of the connection's start)

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("webrtc: %s", task.exception())

    def send(self, update: Update, src: str, **extra) -> None:
        ch = self.channel
        if ch is None or ch.readyState != "open" or (self.stopping and src != "stopped"):
            return
        try:
            ch.send(json.dumps(self.bridge.payload(self.session, update, src) | extra))
        except Exception as err:  # noqa: BLE001 - a closing channel: the next message or close() tells
            log.debug("data channel send failed: %s", err)

    async def run_video(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            self.last_media = time.monotonic()
            self.frames_in += 1
            if self.stopping:
                continue  # Stop was pressed: frames still in flight are not read
            self.latest = frame  # a frame still waiting is replaced: the newest is what matters
            if not self.video_busy:
                self.video_busy = True
                self.spawn(self.process_video())
        if not (self.closed or self.stopping):
            up = await self.bridge.run(self.session.stop_camera)
            self.send(up, "camera-stop")

    async def process_video(self) -> None:
        try:
            while self.latest is not None and not (self.closed or self.stopping):
                wait = self.bridge.min_frame_gap_s - (time.monotonic() - self.last_video)
                if wait > 0:
                    await asyncio.sleep(wait)  # meanwhile newer frames replace this one
                frame, self.latest = self.latest, None
                recv = time.time()
                self.last_video = time.monotonic()
                img = await self.bridge.run(frame.to_ndarray, format="rgb24")
                size = [int(img.shape[1]), int(img.shape[0])]
                if self.session.cfg.face_apart:
                    # the frame's update does not wait for the face models (20-120 ms here, most of
                    # a frame's time): when a read is due and none is running, this frame's face is
                    # read beside the next frames (in the bridge's face threads), and its own update follows
                    session, t, free = self.session, self.session.now(), not self.face_busy

                    def quick():  # in a worker: face_due takes the session's lock, never taken on the event loop
                        return free and session.face_due(t), session.camera_runs, session.push_frame(img, t, read_face=False)

                    read, camera, up = await self.bridge.run(quick)
                    if read and not (self.closed or self.stopping) and not self.face_busy:
                        self.face_busy = True
                        self.spawn(self.read_face(img, t, camera, frame.pts, recv, size))
                else:
                    up = await self.bridge.run(self.session.push_frame, img)
                    read = "face" in up.timings_ms
                self.frames_done += 1
                self.send(up, "frame", pts=frame.pts, recv=recv * 1000, size=size, face_read=read)
        except Exception as err:  # noqa: BLE001 - one bad frame must not end the stream
            log.warning("webrtc frame skipped: %s", err)
        finally:
            self.video_busy = False

    async def read_face(self, img: np.ndarray, t: float, camera: int, pts, recv: float, size: list[int]) -> None:
        """Reads the face of the frame of time ``t`` and sends its update (``src`` "face";
        ``face_pts``: the RTP timestamp of the frame it read)."""
        try:
            up = await self.bridge.run_face(self.session.push_frame, img, t, read_face=True, camera=camera)
            # None: the camera stopped since the frame came. A read that found no face while none
            # was shown tells the page nothing the frames' updates do not (with no face in view,
            # every frame is read: its updates would double the messages)
            if up is not None and (up.present["vision"] or self.face_shown):
                self.face_shown = up.present["vision"]
                self.send(up, "face", face_pts=pts, recv=recv * 1000, size=size)
        except Exception as err:  # noqa: BLE001 - one bad frame must not end the stream
            log.warning("webrtc face read skipped: %s", err)
        finally:
            self.face_busy = False

    async def run_audio(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        pending = 0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            self.last_media = time.monotonic()
            try:
                x, sr = audio_samples(frame)
            except Exception as err:  # noqa: BLE001 - one odd frame must not end the stream
                log.warning("webrtc audio frame skipped: %s", err)
                continue
            if self.stopping:  # after Stop nothing is processed: nothing is kept either (a client could keep sending for hours)
                self.audio, pending = [], 0
                continue
            if sr != self.audio_rate:
                self.audio, pending, self.audio_rate = [], 0, sr
            self.audio.append(x)
            pending += len(x)
            while pending > MAX_PENDING_S * sr and len(self.audio) > 1:  # processing fell behind: the oldest audio goes
                pending -= len(self.audio.pop(0))
            if pending >= self.bridge.audio_chunk_s * sr and not self.audio_busy and not self.stopping:
                chunk, self.audio, pending = np.concatenate(self.audio), [], 0
                self.audio_busy = True
                self.spawn(self.process_audio(chunk, sr))
        if not (self.closed or self.stopping):
            up = await self.bridge.run(self.session.stop_audio)
            self.send(up, "audio-stop")

    async def process_audio(self, chunk: np.ndarray, sr: int) -> None:
        try:
            up = await self.bridge.run(self.session.push_audio, chunk, sr)
            # the page hears of an audio chunk when the answer changed, else every audio_report_s:
            # most chunks fall between two voice hops and change nothing
            key = (round(up.prediction, 4), tuple(up.present.values()), up.transcript)
            now = time.monotonic()
            if key != self.last_audio_key or now - self.last_audio_sent >= self.bridge.audio_report_s:
                self.last_audio_key, self.last_audio_sent = key, now
                self.send(up, "audio")
        except Exception as err:  # noqa: BLE001
            log.warning("webrtc audio skipped: %s", err)
        finally:
            self.audio_busy = False

    async def stop(self, why: str | None = None) -> None:
        """The page pressed Stop (a ``{"stop": true}`` message): no more media is read; the session
        hears that its camera and microphone stopped (what it still had to transcribe is
        transcribed) and the page gets that last update, ``src`` "stopped", before it hangs up.
        ``why``: the server stops the connection itself and says why in the message (the page then
        hangs up and shows it)."""
        if self.stopping or self.closed:
            return
        self.stopping = True
        self.stopped_at = time.monotonic()
        self.latest = None
        for _ in range(500):  # a frame or chunk being read finishes first (else its answer would follow the stop)
            if not (self.video_busy or self.audio_busy or self.face_busy):
                break
            await asyncio.sleep(0.01)
        await self.bridge.run(self.session.stop_camera)
        up = await self.bridge.run(self.session.stop_audio)
        self.send(up, "stopped", **({"why": why} if why else {}))
        self.stopped_at = time.monotonic()  # the page's grace to hang up counts from its last message

    def on_message(self, message) -> None:
        try:
            asked = json.loads(message) if isinstance(message, str) and len(message) < 1024 else None
        except ValueError:
            asked = None
        if isinstance(asked, dict) and asked.get("stop") is True:
            self.spawn(self.stop())
        else:
            log.debug("webrtc: ignored a data-channel message")

    async def close(self) -> None:
        """Ends the connection; the session hears that its camera and microphone stopped (what it
        still had to transcribe is transcribed) and lives on for the page's other inputs."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        try:
            await self.pc.close()
            for stop in (self.session.stop_camera, self.session.stop_audio):
                try:
                    await self.bridge.run(stop)
                except Exception as err:  # noqa: BLE001
                    log.warning("closing a webrtc session: %s", err)
        finally:
            self.bridge.links.discard(self)  # last: a link in links is not closed yet


class RtcBridge:
    """Answers WebRTC offers for live sessions. ``payload(session, update, src)`` makes the
    data-channel message of an update (a dict; ``pts`` and ``recv`` are added for frames)."""

    def __init__(self, payload: Callable[[Session, Update, str], dict], *, max_connections: int = 16, max_fps: float = 12.0,
                 audio_chunk_s: float = 0.1, audio_report_s: float = 0.5, connect_timeout_s: float = 30.0, idle_timeout_s: float = 60.0,
                 stop_grace_s: float = 10.0, workers: int = 4, face_workers: int = 2):
        self.payload = payload
        self.idle_timeout_s = idle_timeout_s
        self.stop_grace_s = stop_grace_s
        self.max_connections = max_connections
        self.min_frame_gap_s = 1.0 / max_fps
        self.audio_chunk_s = audio_chunk_s
        self.audio_report_s = audio_report_s
        self.connect_timeout_s = connect_timeout_s
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmdemo-rtc")
        # face reads apart from the frames (PipelineConfig.face_apart) have threads of their own, so
        # that frames and audio never queue behind them
        self.face_pool = ThreadPoolExecutor(max_workers=face_workers, thread_name_prefix="mmdemo-rtc-face")
        self.links: set[_Link] = set()

    async def run(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def run_face(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.face_pool, functools.partial(fn, *args, **kwargs))

    async def answer(self, offer: dict, session: Session) -> dict:
        """The SDP answer to a browser's offer ({"sdp", "type": "offer"}) for ``session``."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        if not isinstance(offer, dict) or offer.get("type") != "offer" or not isinstance(offer.get("sdp"), str):
            raise RtcError("expected {'sdp': ..., 'type': 'offer'}")
        if len(offer["sdp"]) > MAX_SDP:
            raise RtcError("the offer is too large")
        if "\nm=" not in offer["sdp"]:
            raise RtcError("the offer could not be answered: it offers no media")
        for old in [lk for lk in self.links if lk.session is session]:
            await old.close()  # a page that starts again replaces its own connection
        if len(self.links) >= self.max_connections:
            raise RtcError(f"too many live connections ({self.max_connections}); try again later")
        # no ICE servers: aiortc would otherwise ask Google's public STUN server on every offer (the
        # app never phones home; on a LAN or this machine the host candidates connect)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        link = _Link(self, pc, session)
        self.links.add(link)

        @pc.on("datachannel")
        def on_datachannel(channel):
            link.channel = channel
            channel.on("message", link.on_message)

        @pc.on("track")
        def on_track(track):
            if track.kind == "video":
                for t in pc.getTransceivers():
                    if t.receiver.track is not track:
                        continue
                    try:
                        swapped = hand_frames_on_at_once(t.receiver)
                    except Exception as err:  # noqa: BLE001 - an aiortc that changed inside: keep its own buffer
                        log.warning("webrtc: could not swap the video jitter buffer (%s)", err)
                        swapped = False
                    if not swapped:
                        log.info("webrtc: this aiortc's video jitter buffer was left as it is (a frame interval of delay)")
                link.spawn(link.run_video(track))
            elif track.kind == "audio":
                link.spawn(link.run_audio(track))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await link.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as err:  # noqa: BLE001 - an unusable offer: say so, keep nothing
            await link.close()
            raise RtcError(f"the offer could not be answered: {err}") from None
        link.spawn(self._watch(link))
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def _watch(self, link: _Link) -> None:
        """Frees the slots of connections of no use (there are max_connections): one that does not
        come up within connect_timeout_s; one that sent no video or audio for idle_timeout_s (a page
        left open whose camera and microphone went away: stopped, the page told why); one whose page
        pressed Stop, or was stopped so, but did not hang up within stop_grace_s."""
        tick = max(0.05, min(self.connect_timeout_s, self.idle_timeout_s, self.stop_grace_s) / 4)
        up_by = time.monotonic() + self.connect_timeout_s
        while link.pc.connectionState != "connected":
            if link.closed:
                return
            if time.monotonic() > up_by:
                await link.close()
                return
            await asyncio.sleep(tick)
        link.last_media = max(link.last_media, time.monotonic())  # idleness counts from when it came up
        try:
            while not link.closed:
                now = time.monotonic()
                if link.stopped_at is not None:
                    if now - link.stopped_at > self.stop_grace_s:
                        log.info("webrtc: a page that pressed Stop did not hang up within %.0f s: closed", self.stop_grace_s)
                        await link.close()
                        return
                elif now - link.last_media > self.idle_timeout_s:
                    log.info("webrtc: no media for %.0f s: the connection is closed", self.idle_timeout_s)
                    # the page hears why and hangs up (in a task of its own: this watch goes on, and
                    # the Stop's grace ends a page that does not hang up, or a stop that failed)
                    link.spawn(link.stop(why=f"no video or audio arrived for {self.idle_timeout_s:.0f} s: the connection was closed (press Start again)"))
                    link.stopped_at = link.stopped_at or time.monotonic()
                await asyncio.sleep(tick)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a watch that fails must not leave the slot taken
            log.warning("webrtc: watching a connection failed (%s): closed", err)
            await link.close()

    def stats(self) -> list[dict]:
        return [{"frames_in": lk.frames_in, "frames_done": lk.frames_done, "state": lk.pc.connectionState} for lk in self.links]

    async def close(self) -> None:
        """Closes every connection, then the worker threads (the bridge is not used again)."""
        await asyncio.gather(*(lk.close() for lk in list(self.links)), return_exceptions=True)
        for pool in (self.pool, self.face_pool):
            pool.shutdown(wait=False, cancel_futures=True)
