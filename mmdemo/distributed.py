"""Extraction on Ray: the same work as :func:`mmdemo.extract.extract`, spread over Ray actors.

    python -m mmdemo.extract SRC --labels labels.csv --out features.npz --ray            # local Ray
    python -m mmdemo.extract SRC ... --ray auto --workers 16                            # on a cluster's head

Why Ray core actors (not Ray Data): each worker must load the live encoders once (MediaPipe,
openSMILE, Silero VAD, Whisper, MiniLM: seconds and hundreds of MB) and keep them; each item is a
whole file whose decode can hang or crash a native library. An actor per worker keeps the models;
one call per item lets the driver give every item its own timeout, kill and replace a worker that
hangs or dies, and report exactly that item, while the resume cache is written by the driver alone
(the same part files as the single-process path, so a run can resume on either). Ray Data's actor
pools batch rows and retry or fail whole blocks, which hides which file broke.

Workers need this project at the same path with the same Python environment (requirements.txt and
requirements-ray.txt) and read the media from a path they can see (a shared folder). Each worker asks
Ray for ``cpus_per_worker`` CPUs (fractional by default on a small machine: a whole CPU per actor can
leave no room on 2 cores) and, when the cluster has GPUs and ``gpus_per_worker`` is set, a GPU share:
its encoders then run on CUDA.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from . import MODALITIES
from .extract import Extractor, Item, ItemFeatures, PartCache, _has_text, attach_words, finished, pending
from .media import MediaError

log = logging.getLogger(__name__)

RAY_HINT = "the Ray path needs Ray: pip install -r requirements-ray.txt"
ROOT = Path(__file__).resolve().parents[1]
# offline everywhere; RAY_USAGE_STATS_ENABLED=0: Ray would otherwise report usage to its makers
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ORT_DISABLE_TELEMETRY": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray():
    try:
        import ray
    except ImportError:
        raise SystemExit(RAY_HINT) from None
    return ray


class _Worker:
    """One Ray actor: an Extractor loaded once, then one call per item."""

    def __init__(self, make, kwargs: dict):
        os.environ.update(OFFLINE)
        self.extractor = make(**kwargs)
        warmup = getattr(self.extractor, "warmup", None)
        if warmup is not None:  # the models load here, while the actor is "warming": items' time limits start after
            warmup()

    def ready(self) -> bool:
        return True

    def media(self, item: Item) -> ItemFeatures:
        return self.extractor.media(item)

    def words(self, texts: list[str | None]):
        return self.extractor.words.encode_batch(texts)


def start(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None):
    """Ray: local (``address`` None: a fresh Ray on this machine's CPUs, bound to 127.0.0.1, no
    dashboard, whatever cluster may also run here) or a running cluster (``auto``, or HEAD:6379 from
    a machine of the cluster). A failure to start or connect is a SystemExit with the reason.
    ``num_gpus``: the GPUs local Ray hands out (default: the ones Ray finds)."""
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)  # before Ray starts its processes (they inherit them)
    ray = _ray()
    if ray.is_initialized():
        return ray
    env = {"env_vars": OFFLINE | {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}}
    try:
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, include_dashboard=False,
                     runtime_env=env, log_to_driver=False, _node_ip_address="127.0.0.1")
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise SystemExit(f"Ray could not start{' at ' + address if address else ''}: {err}") from None
    return ray


MEDIA_ERRORS = (MediaError, OSError, ValueError, RuntimeError)  # what the single-process path reports as a broken file


def ray_extract(items: list[Item], extractor_kwargs: dict, cache: PartCache, *, address: str | None = None, workers: int | None = None,
                cpus_per_worker: float | None = None, gpus_per_worker: float = 0.0, item_timeout_s: float = 600.0, chunk: int = 64,
                progress: bool = True, make=Extractor, stats: dict | None = None) -> tuple[dict[str, ItemFeatures], list[dict]]:
    """Features of every item (cached ones reused) on Ray actors; returns (features by id, errors),
    as :func:`mmdemo.extract.extract` does. An item that raises a media error, takes longer than
    ``item_timeout_s`` or kills its worker is reported and skipped; a lost worker is replaced while
    work remains. Any other exception in a worker stops the run (as it does without Ray), after the
    finished items are in the cache. ``gpus_per_worker``: a GPU share per worker when the cluster
    has GPUs (the encoders then run on CUDA; without it workers run on the CPU).
    ``make``: the extractor class (its ``media(item)`` and ``words.encode_batch(texts)``);
    ``stats``, when given, gets the seconds spent starting the workers and extracting."""
    if workers is not None and workers < 1:
        raise ValueError("workers must be at least 1")
    prints, todo = pending(items, cache)
    errors: list[dict] = []
    if not todo:
        return finished(items, cache, prints), errors
    ray = start(address)
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    resources = ray.cluster_resources()
    total_cpus, total_gpus = float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))
    kwargs = dict(extractor_kwargs)
    gpu = bool(gpus_per_worker and total_gpus > 0)
    kwargs["device"] = "cuda" if gpu else "cpu"  # never a GPU Ray did not hand out
    n = workers or max(1, int(total_cpus))
    if gpu:
        n = min(n, max(1, int(total_gpus / gpus_per_worker)))  # more would wait for a GPU forever
    n = min(n, len(todo))
    cpus = cpus_per_worker if cpus_per_worker is not None else min(1.0, total_cpus / n)
    Remote = ray.remote(num_cpus=cpus, num_gpus=gpus_per_worker if gpu else 0, max_restarts=0)(_Worker)
    order = {it.id: k for k, it in enumerate(items)}
    # workers may not share the driver's working directory: they get absolute paths
    sent = {it.id: replace(it, path=Path(it.path).resolve()) if it.path is not None else it for it in todo}

    actors: list = []
    idle: list = []
    warming: dict = {}  # ready ref -> actor still loading its models
    inflight: dict = {}  # ref -> (item, actor, started)
    queue = list(todo)
    batch: list[ItemFeatures] = []
    texts: list[str | None] = []
    timing: Counter = Counter()
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"extract (ray, {n} workers)", unit="clip", disable=not progress)

    def spawn() -> None:
        actor = Remote.remote(make, kwargs)
        actors.append(actor)
        warming[actor.ready.remote()] = actor

    def drop(actor) -> None:
        ray.kill(actor, no_restart=True)
        if actor in actors:
            actors.remove(actor)
        if queue and len(actors) < n:
            spawn()  # a replacement while work remains; it takes items once its models are loaded

    def fail(item: Item, why: str) -> None:
        errors.append({"id": item.id, "path": str(item.path) if item.path else None, "error": why})
        bar.update(1)

    def words(texts_: list[str | None]):
        """The batch's words on a worker (a fresh one if its worker dies), at most 10 minutes."""
        for attempt in range(2):
            worker = idle[0] if idle else None
            if worker is None:
                worker = Remote.remote(make, kwargs)
                ray.get(worker.ready.remote(), timeout=600)
                actors.append(worker)
                idle.append(worker)
            try:
                return ray.get(worker.words.remote(texts_), timeout=600)
            except (RayActorError, GetTimeoutError):
                idle.remove(worker)
                drop(worker)
                if attempt:
                    raise

    def flush() -> None:
        nonlocal batch, texts
        if not batch:
            return
        if "text" in tuple(kwargs.get("modalities", MODALITIES)):
            t0 = time.perf_counter()
            feats, reasons = words(texts)
            timing["text_s"] += time.perf_counter() - t0
            attach_words(batch, texts, feats, reasons)
        cache.write(batch)
        batch, texts = [], []

    t_start = time.perf_counter()
    t_work = None
    try:
        for _ in range(n):
            spawn()
        while queue or inflight:
            if warming:
                ready, _ = ray.wait(list(warming), num_returns=len(warming), timeout=0)
                for ref in ready:
                    actor = warming.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(actor)
                    except RayActorError as err:  # its models would not load: nothing can run there
                        actors.remove(actor)
                        if not actors:
                            raise SystemExit(f"no Ray worker could start: {err}") from None
                if t_work is None and (idle or not warming):
                    t_work = time.perf_counter()
            while queue and idle:
                it, actor = queue.pop(0), idle.pop()
                inflight[actor.media.remote(sent[it.id])] = (it, actor, time.monotonic())
            if not inflight:
                if not actors:
                    raise SystemExit("every Ray worker was lost")
                if warming:
                    ray.wait(list(warming), num_returns=1, timeout=0.5)
                continue
            done, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0.5)
            for ref in done:
                it, actor, t0 = inflight.pop(ref)
                try:
                    f = ray.get(ref)
                except RayTaskError as err:  # the item raised in the worker
                    cause = err.cause if getattr(err, "cause", None) is not None else err
                    if not isinstance(cause, MEDIA_ERRORS):
                        raise cause from None  # a bug, not a broken file: stop, as without Ray
                    fail(it, str(cause))
                    idle.append(actor)
                    continue
                except RayActorError as err:  # the worker died on it
                    fail(it, f"the worker extracting it died ({str(err).splitlines()[0][:200]})")
                    drop(actor)
                    continue
                timing["media_s"] += time.monotonic() - t0
                f.id, f.fingerprint = it.id, prints[it.id]
                batch.append(f)
                texts.append(it.text if _has_text(it) else f.transcript)
                bar.update(1)
                idle.append(actor)
                if len(batch) >= chunk:
                    flush()
            now = time.monotonic()
            for ref, (it, actor, t0) in list(inflight.items()):
                if now - t0 > item_timeout_s and not ray.wait([ref], timeout=0)[0]:  # still running: a hung decoder
                    inflight.pop(ref)
                    fail(it, f"timed out after {item_timeout_s:g} s")
                    drop(actor)  # only killing the process stops it
        flush()
    finally:
        try:
            flush()  # what finished is kept even when the run stops
        except Exception as err:  # noqa: BLE001
            log.warning("could not save the last %d items: %s", len(batch), err)
        bar.close()
        for a in actors:
            ray.kill(a, no_restart=True)
    errors.sort(key=lambda e: order.get(e["id"], 0))
    if stats is not None:
        t_work = t_work or time.perf_counter()
        stats.update(startup_s=t_work - t_start, work_s=time.perf_counter() - t_work, workers=n, cpus_per_worker=cpus)
    if timing:
        log.info("extraction time (ray): %s", ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    return finished(items, cache, prints), errors
