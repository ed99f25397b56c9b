"""Extraction on Ray: the same work as :func:`mmdemo.extract.extract`, spread over Ray actors.

    python -m mmdemo.extract SRC --labels labels.csv --out features.npz --ray            # local Ray
    python -m mmdemo.extract SRC ... --ray ray://head:10001 --workers 16                # a cluster

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
from pathlib import Path

from tqdm.auto import tqdm

from . import MODALITIES
from .extract import Extractor, Item, ItemFeatures, PartCache, _has_text
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

    def ready(self) -> bool:
        return True

    def media(self, item: Item) -> ItemFeatures:
        return self.extractor.media(item)

    def words(self, texts: list[str | None]):
        return self.extractor.words.encode_batch(texts)


def start(address: str | None = None, *, num_cpus: int | None = None):
    """Ray, local (``address`` None: this machine's CPUs, no dashboard) or a running cluster."""
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)  # before Ray starts its processes (they inherit them)
    ray = _ray()
    if ray.is_initialized():
        return ray
    env = {"env_vars": OFFLINE | {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, runtime_env=env, log_to_driver=False)
    return ray


def ray_extract(items: list[Item], extractor_kwargs: dict, cache: PartCache, *, address: str | None = None, workers: int | None = None,
                cpus_per_worker: float | None = None, gpus_per_worker: float = 0.0, item_timeout_s: float = 600.0, chunk: int = 64,
                progress: bool = True, make=Extractor, stats: dict | None = None) -> tuple[dict[str, ItemFeatures], list[dict]]:
    """Features of every item (cached ones reused) on Ray actors; returns (features by id, errors),
    as :func:`mmdemo.extract.extract` does. An item that raises, takes longer than
    ``item_timeout_s`` or kills its worker is reported and skipped; a lost worker is replaced.
    ``make``: the extractor class (its ``media(item)`` and ``words.encode_batch(texts)``);
    ``stats``, when given, gets the seconds spent starting the workers and extracting."""
    ray = start(address)
    from ray.exceptions import RayActorError, RayTaskError

    total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    n = workers or max(1, int(total_cpus))
    cpus = cpus_per_worker if cpus_per_worker is not None else min(1.0, total_cpus / n)
    kwargs = dict(extractor_kwargs)
    if gpus_per_worker and ray.cluster_resources().get("GPU", 0) > 0:
        kwargs["device"] = "cuda"
    Remote = ray.remote(num_cpus=cpus, num_gpus=gpus_per_worker if kwargs.get("device") == "cuda" else 0, max_restarts=0)(_Worker)

    def new_actor(wait: bool = False):
        actor = Remote.remote(make, kwargs)
        if wait:  # a replacement: its models load before it gets an item (and that item's clock)
            ray.get(actor.ready.remote())
        return actor

    todo = [it for it in items if it.id not in cache.done]
    errors: list[dict] = []
    if not todo:
        return {it.id: cache.done[it.id] for it in items if it.id in cache.done}, errors
    t_start = time.perf_counter()
    actors = [new_actor() for _ in range(min(n, len(todo)))]
    ray.get([a.ready.remote() for a in actors])  # models loaded everywhere before the clock runs
    t_work = time.perf_counter()
    idle = list(actors)
    inflight: dict = {}  # ref -> (item, actor, started)
    queue = list(todo)
    batch: list[ItemFeatures] = []
    texts: list[str | None] = []
    timing: Counter = Counter()
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"extract (ray, {len(actors)} workers)", unit="clip", disable=not progress)

    def fail(item: Item, why: str) -> None:
        errors.append({"id": item.id, "path": str(item.path) if item.path else None, "error": why})
        bar.update(1)

    def flush() -> None:
        nonlocal batch, texts
        if not batch:
            return
        if "text" in tuple(kwargs.get("modalities", MODALITIES)):
            t0 = time.perf_counter()
            worker = idle[0] if idle else actors[0]
            feats, reasons = ray.get(worker.words.remote(texts))
            timing["text_s"] += time.perf_counter() - t0
            for f, x, r, txt in zip(batch, feats, reasons, texts):
                f.feats["text"] = None if r else x
                f.reasons["text"] = r
                f.transcript = f.transcript or (txt or "")
        cache.write(batch)
        batch, texts = [], []

    try:
        while queue or inflight:
            while queue and idle:
                it, actor = queue.pop(0), idle.pop()
                inflight[actor.media.remote(it)] = (it, actor, time.monotonic())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                it, actor, t0 = inflight.pop(ref)
                try:
                    f = ray.get(ref)
                except RayTaskError as err:  # the item raised in the worker: a broken file
                    cause = err.cause if getattr(err, "cause", None) is not None else err
                    if not isinstance(cause, (MediaError, OSError, ValueError, RuntimeError)):
                        log.warning("%s: %s", it.id, cause)
                    fail(it, str(cause))
                    idle.append(actor)
                    continue
                except RayActorError:  # the worker died on it
                    fail(it, "the worker extracting it died (a crash in a decoder or an encoder)")
                    actors.remove(actor)
                    replacement = new_actor(wait=True)
                    actors.append(replacement)
                    idle.append(replacement)
                    continue
                timing["media_s"] += time.monotonic() - t0
                batch.append(f)
                texts.append(it.text if _has_text(it) else f.transcript)
                bar.update(1)
                idle.append(actor)
                if len(batch) >= chunk:
                    flush()
            now = time.monotonic()
            for ref, (it, actor, t0) in list(inflight.items()):
                if now - t0 > item_timeout_s:  # a hung decoder: only killing the process stops it
                    inflight.pop(ref)
                    ray.kill(actor, no_restart=True)
                    fail(it, f"timed out after {item_timeout_s:g} s")
                    actors.remove(actor)
                    replacement = new_actor(wait=True)
                    actors.append(replacement)
                    idle.append(replacement)
        flush()
    finally:
        bar.close()
        for a in actors:
            ray.kill(a, no_restart=True)
    if stats is not None:
        stats.update(startup_s=t_work - t_start, work_s=time.perf_counter() - t_work, workers=len(actors), cpus_per_worker=cpus)
    if timing:
        log.info("extraction time (ray): %s", ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    return {it.id: cache.done[it.id] for it in items if it.id in cache.done}, errors
