"""Per-process cache of opened image handles: reuse, reopening on change, bounds, and worker processes."""

import os
import pickle
import platform
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from rhapso_gpu.detection import DetectParams, detect_interest_points
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.fusion.run import fuse_dataset
from rhapso_gpu.io._loader_common import array_source
from rhapso_gpu.io.image_writers import image_loader_element, write_view_levels
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.reader_cache import HANDLES, HandleCache
from rhapso_gpu.io.spimdata import SpimData, Timepoints, ViewId, ViewSetup
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.synth.dataset import SynthParams, generate_dataset

VIEW = ViewId(0, 0)


def one_view(folder, image_zyx, ngff="0.4", chunks_zyx=(4, 8, 8)) -> SpimData:
    """A one-view zarr dataset holding ``image_zyx`` (written again in place on a second call)."""
    write_view_levels("zarr", str(folder), VIEW, [image_zyx], [(1, 1, 1)], (1, 1, 1), chunks_zyx, ngff_version=ngff)
    spim = SpimData(timepoints=Timepoints("range", [0], ["0"]))
    spim.image_loader = image_loader_element("zarr", [VIEW], ngff)
    spim.setups[0] = ViewSetup(0, "0", tuple(image_zyx.shape[::-1]), None, {})
    save_spimdata(spim, str(folder / "dataset.xml"))
    return load_spimdata(str(folder / "dataset.xml"))


def shipped_reader(spim):
    """The level-0 reader as a block task gets it: a pickled copy without open handles."""
    level = open_view_levels(spim, VIEW)[0]
    return pickle.loads(pickle.dumps(array_source(level.data_zyx)))


@pytest.fixture
def handles():
    HANDLES.clear()
    yield HANDLES
    HANDLES.clear()


def image(seed, shape=(8, 16, 24)):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_copies_of_a_reader_share_one_handle(tmp_path, handles, ngff):
    data = image(1)
    spim = one_view(tmp_path, data, ngff)
    first, second = shipped_reader(spim), shipped_reader(spim)
    box = (slice(1, 7), slice(3, 15), slice(5, 20))
    np.testing.assert_array_equal(first[box], data[box])
    np.testing.assert_array_equal(second[box], data[box])
    assert first._handle() is second._handle()
    assert handles.misses == 1 and len(handles) == 1


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_an_array_rewritten_in_place_is_opened_again(tmp_path, handles, ngff):
    """Same location, shape and dtype, other chunks and pixels: a stale handle would read the new chunks wrongly."""
    spim = one_view(tmp_path, image(1), ngff, chunks_zyx=(4, 8, 8))
    old = shipped_reader(spim)
    old_handle = old._handle()
    new_data = image(2)
    spim = one_view(tmp_path, new_data, ngff, chunks_zyx=(2, 4, 16))
    reader = shipped_reader(spim)
    np.testing.assert_array_equal(reader[(slice(None),) * 3], new_data)
    assert reader._handle() is not old_handle and handles.misses == 2

    metadata = next(p for p in (Path(reader.location) / n for n in ("zarr.json", ".zarray")) if p.exists())
    before = handles.misses
    stat = os.stat(metadata)
    os.utime(metadata, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: opened again, same pixels
    np.testing.assert_array_equal(reader[(slice(None),) * 3], new_data)
    assert handles.misses == before + 1


def test_the_cache_is_bounded_least_recently_used_first():
    cache = HandleCache(max_entries=2)
    opened = []

    def opener(key):
        return lambda: opened.append(key) or object()

    a = cache.get("a", opener("a"))
    cache.get("b", opener("b"))
    assert cache.get("a", opener("a")) is a  # a is now the most recently used
    cache.get("c", opener("c"))  # evicts b
    assert len(cache) == 2 and opened == ["a", "b", "c"]
    assert cache.get("a", opener("a")) is a
    cache.get("b", opener("b"))
    assert opened == ["a", "b", "c", "b"] and len(cache) == 2
    assert cache.get("a", opener("a"), fingerprint=1) is not a  # another fingerprint: opened again
    with pytest.raises(ValueError, match="at least 1"):
        HandleCache(0)


def test_failed_opens_cache_nothing_and_threads_get_their_own_keys():
    cache = HandleCache(max_entries=3)

    def fail():
        raise OSError("unreachable")

    with pytest.raises(OSError):
        cache.get("x", fail)
    assert len(cache) == 0
    wrong = []

    def worker(i):
        for n in range(200):
            key = (i + n) % 5
            if cache.get(key, lambda k=key: ("handle", k)) != ("handle", key):
                wrong.append(key)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong and len(cache) == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_forked_child_starts_with_an_empty_cache(handles):
    handles.get("key", object)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only reports through its exit code
        os._exit(0 if len(HANDLES) == 0 and HANDLES.get("key", lambda: "child's own") == "child's own" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and len(handles) == 1


def _worker_state():
    """On a worker: the cache counters, and minor page faults of allocating and filling 100 arrays of 2 MB."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        np.ones(2**19, dtype=np.float32)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {"hits": HANDLES.hits, "misses": HANDLES.misses, "faults": faults}


@pytest.fixture(scope="module")
def beads(tmp_path_factory):
    out = tmp_path_factory.mktemp("beads")
    with open_cluster("synchronous") as cluster:
        generate_dataset(
            str(out), SynthParams(content="beads", tiles=(2, 1, 1), tile_size=(64, 64, 32), seed=3), cluster, "numpy"
        )
    return load_spimdata(str(out / "dataset.xml"))


def test_same_results_on_every_cluster_kind_and_after_a_worker_restart(beads, tmp_path, monkeypatch):
    """Detection and fusion agree on synchronous, threads and 2 worker processes; workers reuse their handles."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # as a fresh shell; distributed sets it in-process
    detect = DetectParams(dsxy=1, dsz=1, block_size=(32, 32, 16), min_intensity=0, max_intensity=600)
    fuse = FuseParams(chunk_size=(32, 32, 16), block_scale=(1, 1, 1))
    points, fused = {}, {}

    def run(spec, cluster):
        points[spec] = detect_interest_points(beads, detect, cluster, "numpy")
        location = str(tmp_path / f"{spec}.ome.zarr")
        fuse_dataset(beads, location, fuse, cluster, "numpy")
        fused[spec] = zarr.open_array(f"{location}/0", mode="r")[...]

    for spec in ("synchronous", "threads"):
        with open_cluster(spec, n_workers=2) as cluster:
            run(spec, cluster)
    with open_cluster("local", n_workers=2) as cluster:
        run("local", cluster)
        state = cluster.client.run(_worker_state)
        cluster.client.restart()  # new worker processes start with an empty cache and open the images themselves
        run("restarted", cluster)
        restarted = cluster.client.run(_worker_state)

    n_tasks = sum(v.n_blocks for v in points["synchronous"].views.values())
    assert n_tasks >= 8 and sum(len(v.loc_xyz) for v in points["synchronous"].views.values()) > 10
    for spec in ("threads", "local", "restarted"):
        for view, expected in points["synchronous"].views.items():
            np.testing.assert_array_equal(points[spec].views[view].loc_xyz, expected.loc_xyz)
            np.testing.assert_array_equal(points[spec].views[view].intensity, expected.intensity)
        np.testing.assert_array_equal(fused[spec], fused["synchronous"])
    assert fused["synchronous"].max() > 0
    for per_worker in (state, restarted):
        # each worker opened each level it read once (2 views) and reused it in its other tasks
        assert sum(s["misses"] for s in per_worker.values()) <= 2 * len(per_worker)
        assert sum(s["hits"] for s in per_worker.values()) > 0
    if platform.libc_ver()[0] == "glibc":  # with distributed's MALLOC_TRIM_THRESHOLD_ every page faults anew: 51 200
        assert all(s["faults"] < 100 * 512 // 4 for s in state.values()), state
