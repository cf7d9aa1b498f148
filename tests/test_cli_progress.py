"""Every computing command shows one progress bar at a time, labelled with the command's name.

The bars are the cluster's (:meth:`rhapso_gpu.scheduler.Cluster.compute`);
here they are forced on and every ``rich`` progress display that starts is
recorded, with its label when it is the cluster's and the number of displays
live at that moment.
"""

import pytest
from rich.progress import Progress

from rhapso_gpu import scheduler
from rhapso_gpu.cli import main

SMALL = ["--tiles", "2x1x1", "--tile-size", "48x40x12", "--content", "beads", "--seed", "2"]
COMPUTE = ["--cluster", "synchronous", "--backend", "numpy"]


@pytest.fixture
def bars(monkeypatch):
    """Cluster bars forced on; returns the list of (label, displays live) per cluster bar started."""
    live, seen = [], []
    start, stop, bar = Progress.start, Progress.stop, scheduler._progress_bar

    def counted_start(self):
        live.append(self)
        start(self)

    def counted_stop(self):
        stop(self)
        if self in live:
            live.remove(self)

    def recorded_bar(label, console):
        with bar(label, console) as (progress, task):
            seen.append((label, len(live)))
            yield progress, task

    monkeypatch.setattr(Progress, "start", counted_start)
    monkeypatch.setattr(Progress, "stop", counted_stop)
    monkeypatch.setattr(scheduler, "_progress_bar", scheduler.contextmanager(recorded_bar))
    monkeypatch.setattr(scheduler.Cluster, "show_progress", lambda self: True)
    return seen


def _labels(seen, argv) -> set[str]:
    seen.clear()
    assert main([str(a) for a in argv]) == 0
    assert seen, f"{argv[0]}: no compute drew a bar"
    assert max(n for _, n in seen) == 1, f"{argv[0]}: more than one progress display at a time: {seen}"
    return {label for label, _ in seen}


def test_each_command_shows_one_bar_labelled_with_its_name(tmp_path, bars):
    assert _labels(bars, ["synth", tmp_path / "data", *SMALL, *COMPUTE]) == {"synth"}
    xml = tmp_path / "data" / "dataset.xml"
    detect = _labels(bars, ["detect", xml, *COMPUTE])
    assert {label.split(":")[0] for label in detect} == {"detect"}
    total = int(next(iter(detect - {"detect"})).rsplit(" ", 1)[1])  # "detect: blocks 1-2 of 8": batch and total
    assert {f"detect: blocks 1-{b} of {total}" for b in range(1, total + 1)} & detect  # counted from the first
    assert {f"detect: blocks {a}-{total} of {total}" for a in range(1, total + 1)} & detect  # to the last block
    assert _labels(bars, ["match", xml, "--method", "offset-consensus", *COMPUTE]) == {"match"}
    assert _labels(bars, ["stitch", xml, *COMPUTE]) == {"stitch"}
    fused = tmp_path / "fused.ome.zarr"
    assert _labels(bars, ["fuse", xml, fused, "--multiscale", "--factors", "2x2x1", *COMPUTE]) == {"fuse", "multiscale"}
    assert _labels(bars, ["multiscale", fused, "--factors", "2x2x2", *COMPUTE]) == {"multiscale"}
