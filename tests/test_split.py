"""``rhapso-gpu split``: sub-view grid, split XML, split image loader, real and fake interest points."""

import hashlib

import numpy as np
import pytest

from rhapso_gpu.cli import main
from rhapso_gpu.geometry import apply_affine, view_affine, view_box_world
from rhapso_gpu.io.correspondences import read_correspondences
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.interestpoints import (
    container_location,
    read_interest_points,
    set_interest_points_ref,
    write_interest_points,
)
from rhapso_gpu.io.spimdata import ViewId
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata, spimdata_to_xml
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.split import SplitParams, split_dataset
from rhapso_gpu.split.grid import _balanced_size, last_image_size, split_axis, split_view, step_size
from rhapso_gpu.synth.dataset import SynthParams, generate_dataset

# 64 x 64 x 96 tiles, pyramid factors (1,1,1), (2,2,1), (4,4,2): step (4, 4, 2).
# z cut into 48-pixel blocks overlapping by 16: [0, 47], [32, 79], [64, 95].
Z_BOXES = [(0, 47), (32, 79), (64, 95)]
PARAMS = {"target_image_size": (64, 64, 48), "target_overlap": (16, 16, 16), "disable_optimization": True, "error": 0.0}


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A 2x1x1 synthetic n5 dataset with real 'beads' points (original local pixels) in every view."""
    folder = tmp_path_factory.mktemp("split")
    with open_cluster("synchronous") as cluster:
        result = generate_dataset(
            str(folder), SynthParams(tiles=(2, 1, 1), tile_size=(64, 64, 96), levels=3, format="n5", seed=3),
            cluster, "numpy",
        )
    spim = load_spimdata(result.xml)
    rng = np.random.default_rng(1)
    for view in spim.view_ids():
        points = rng.uniform((0, 0, 0), (63, 63, 95), size=(40, 3))
        write_interest_points(container_location(spim), view, "beads", points, np.arange(40, dtype=np.float32))
        set_interest_points_ref(spim, view, "beads", "test points")
    save_spimdata(spim)
    return result.xml


@pytest.fixture(scope="module")
def split(original, tmp_path_factory):
    """The original split by the API (error 0), with the input's hash before and after."""
    before = sha(original)
    spim = load_spimdata(original)
    out = original.replace("dataset.xml", "split.xml")
    result = split_dataset(spim, SplitParams(**PARAMS), out)
    return original, out, result, before


# --- grid -------------------------------------------------------------------


def test_step_is_the_lcm_of_the_pyramid_factors():
    assert step_size([(1, 1, 1), (2, 2, 1), (4, 4, 2)]) == (4, 4, 2)
    assert step_size([(2, 2, 1), (3, 3, 1.5)]) == (6, 6, 1)


def test_axis_blocks_and_bigstitcher_balancing():
    assert split_axis(96, 48, 16) == [(0, 47), (32, 79), (64, 95)]
    assert last_image_size(96, 48, 16) == 32
    # the last block (32) is more than half a block: blocks shrink by steps of 2 while the last one grows
    assert _balanced_size(96, 48, 16, 2) == 44
    assert split_axis(96, 44, 16) == [(0, 43), (28, 71), (56, 95)]
    boxes = split_view((64, 64, 96), (64, 64, 48), (16, 16, 16), (4, 4, 2), optimize=True)
    assert [(lo[2], hi[2]) for lo, hi in boxes] == [(0, 43), (28, 71), (56, 95)]
    # x fastest, then y, then z (BigStitcher's order)
    boxes = split_view((100, 60, 10), (64, 32, 64), (16, 8, 16), (4, 4, 2), optimize=False)
    assert [(int(lo[0]), int(lo[1])) for lo, _ in boxes] == [(0, 0), (48, 0), (0, 24), (48, 24), (0, 48), (48, 48)]


# --- split dataset ----------------------------------------------------------


def test_sub_views_tile_the_original_in_world_space(split):
    original_xml, out, result, _ = split
    orig, spim = load_spimdata(original_xml), load_spimdata(out)
    assert len(spim.setups) == 6 and result.step_xyz == (4, 4, 2)
    for old in (0, 1):
        subs = [sv for sv in result.subviews if sv.old_setup == old]
        assert [(int(sv.min_xyz[2]), int(sv.max_xyz[2])) for sv in subs] == Z_BOXES
        lo, hi = view_box_world(orig, ViewId(0, old))
        covered = np.zeros(96, bool)
        for sv in subs:
            view = ViewId(0, sv.setup)
            assert spim.setups[sv.setup].size_xyz == (64, 64, sv.max_xyz[2] - sv.min_xyz[2] + 1)
            assert spim.registrations[view][-1].name == "Image Splitting"
            # world position of a sub-view pixel == world position of the original pixel min + p
            p = np.array([[0, 0, 0], [63, 17, 5], [3, 63, 15]], float)
            np.testing.assert_allclose(apply_affine(view_affine(spim, view), p),
                                       apply_affine(view_affine(orig, ViewId(0, old)), p + sv.min_xyz), atol=1e-9)
            slo, shi = view_box_world(spim, view)
            assert np.all(slo >= lo - 1e-9) and np.all(shi <= hi + 1e-9)
            covered[sv.min_xyz[2]:sv.max_xyz[2] + 1] = True
            assert spim.setups[sv.setup].voxel_size == orig.setups[old].voxel_size
        assert covered.all()
    tiles = [s.attributes["tile"] for s in spim.setups.values()]
    assert tiles == [0, 1, 2, 3, 4, 5]  # old tile * 3 + k


def test_split_loader_reads_the_original_pixels(split):
    original_xml, out, result, _ = split
    orig, spim = load_spimdata(original_xml), load_spimdata(out)
    assert spim.image_format == "split.viewerimgloader"
    rng = np.random.default_rng(0)
    for sv in result.subviews:
        view, old_view = ViewId(0, sv.setup), ViewId(0, sv.old_setup)
        levels, old_levels = open_view_levels(spim, view), open_view_levels(orig, old_view)
        assert len(levels) == 3
        for level, old_level in zip(levels, old_levels):
            f = np.asarray(level.factors_xyz, int)
            z0, z1 = sv.min_xyz[2] // f[2], (sv.max_xyz[2] + 1) // f[2]
            np.testing.assert_array_equal(level.data_zyx.compute(), old_level.data_zyx[z0:z1].compute())
        # the same world position in both datasets holds the same full-resolution pixel
        sub0, old0 = levels[0].data_zyx.compute(), old_levels[0].data_zyx.compute()
        to_old = np.linalg.inv(view_affine(orig, old_view)) @ view_affine(spim, view)
        for p in rng.integers(0, np.array(sv.size_xyz), size=(20, 3)):
            q = np.rint(apply_affine(to_old, p[None])[0]).astype(int)
            assert sub0[p[2], p[1], p[0]] == old0[q[2], q[1], q[0]]


def test_fake_points_coincide_in_world_with_symmetric_correspondences(split):
    _, out, result, _ = split
    spim = load_spimdata(out)
    where = container_location(spim)
    pairs = 0
    for old in (0, 1):
        subs = [sv for sv in result.subviews if sv.old_setup == old]
        for a, b in ((subs[0], subs[1]), (subs[1], subs[2])):
            va, vb = ViewId(0, a.setup), ViewId(0, b.setup)
            pa, pb = (read_interest_points(where, v, "splitPoints").loc_xyz for v in (va, vb))
            ids_a, ids_b = read_correspondences(where, va, "splitPoints")[(vb, "splitPoints")]
            back_b, back_a = read_correspondences(where, vb, "splitPoints")[(va, "splitPoints")]
            np.testing.assert_array_equal(ids_a, back_a)
            np.testing.assert_array_equal(ids_b, back_b)
            # 64 x 64 x 16 overlap: ceil(100 * 65536 / 1e6) = 7 points, clamped to min_points = 20
            assert len(ids_a) == 20
            wa = apply_affine(view_affine(spim, va), pa[ids_a.astype(int)])
            wb = apply_affine(view_affine(spim, vb), pb[ids_b.astype(int)])
            np.testing.assert_allclose(wa, wb, atol=1e-9)
            local = pa[ids_a.astype(int)] + a.min_xyz  # original pixels: inside the overlap box
            assert np.all(local[:, 2] >= b.min_xyz[2]) and np.all(local[:, 2] <= a.max_xyz[2])
            pairs += 1
        # the first and last sub-views do not overlap: no correspondences between them
        corr = read_correspondences(where, ViewId(0, subs[0].setup), "splitPoints")
        assert (ViewId(0, subs[2].setup), "splitPoints") not in corr
    assert pairs == 4 and result.points.fake_points == 80


def test_real_points_are_carried_to_the_sub_views_that_hold_them(split):
    original_xml, out, result, _ = split
    orig, spim = load_spimdata(original_xml), load_spimdata(out)
    for sv in result.subviews:
        old = read_interest_points(container_location(orig), ViewId(0, sv.old_setup), "beads")
        inside = np.all((old.loc_xyz >= sv.min_xyz) & (old.loc_xyz <= sv.max_xyz), axis=1)
        new = read_interest_points(container_location(spim), ViewId(0, sv.setup), "beads_split")
        np.testing.assert_allclose(new.loc_xyz, old.loc_xyz[inside] - sv.min_xyz)
        np.testing.assert_array_equal(new.intensities, old.intensities[inside])
    labels = {(r.view.setup, r.label) for r in spim.interest_points}
    assert labels == {(s, lab) for s in range(6) for lab in ("beads_split", "splitPoints")}


def test_split_xml_round_trips_and_the_input_is_untouched(split):
    original_xml, out, _, before = split
    assert sha(original_xml) == before
    with open(out, "rb") as fh:
        assert spimdata_to_xml(load_spimdata(out)) == fh.read()


def test_error_jitters_and_exclude_radius_keeps_fake_points_off_real_ones(original, tmp_path):
    spim = load_spimdata(original)
    out = original.replace("dataset.xml", "split-jitter.xml")
    params = SplitParams(**{**PARAMS, "error": 1.0, "exclude_radius": 6.0, "fake_label": "splitPoints_1"})
    result = split_dataset(spim, params, out)
    split = load_spimdata(out)
    where = container_location(split)
    a, b = result.subviews[0], result.subviews[1]
    va, vb = ViewId(0, a.setup), ViewId(0, b.setup)
    ids_a, ids_b = read_correspondences(where, va, "splitPoints_1")[(vb, "splitPoints_1")]
    pa = read_interest_points(where, va, "splitPoints_1").loc_xyz[ids_a.astype(int)] + a.min_xyz
    pb = read_interest_points(where, vb, "splitPoints_1").loc_xyz[ids_b.astype(int)] + b.min_xyz
    d = np.abs(pa - pb)
    assert np.all(d <= 1.0) and d.max() > 0.1  # independent +-0.5 per copy and axis
    real = read_interest_points(container_location(spim), ViewId(0, 0), "beads").loc_xyz
    centre = (pa + pb) / 2
    dist = np.linalg.norm(centre[:, None] - real[None], axis=2).min(axis=1)
    assert np.all(dist > 6.0 - 1.0)


# --- command line -----------------------------------------------------------


def test_cli_writes_the_split_xml_and_refuses_to_overwrite(original, tmp_path, capsys):
    out = original.replace("dataset.xml", "split-cli.xml")
    args = ["split", original, "--out", out, "--set", "target_image_size=[64, 64, 48]",
            "--set", "target_overlap=[16, 16, 16]", "--set", "add_fake_points=false"]
    assert main(args) == 0
    assert "6 sub-views" in capsys.readouterr().out
    assert len(load_spimdata(out).setups) == 6
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--set", "target_overlap=[16, 16, 48]"], "must be smaller than target_image_size"),
        (["--set", "min_points=30", "--set", "max_points=10"], "min_points (30) is larger than max_points (10)"),
        (["--set", "target_size=[1, 2, 3]"], "did you mean 'target_image_size'"),
        (["--set", "error=-1"], "parameter 'error'"),
    ],
)
def test_bad_parameters_are_one_line(original, capsys, extra, fragment):
    before = sha(original)
    out = original.replace("dataset.xml", "split-bad.xml")
    assert main(["split", original, "--out", out, "--set", "target_image_size=[64, 64, 48]"] + extra) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert sha(original) == before


def test_cli_never_writes_its_input(original, capsys):
    before = sha(original)
    assert main(["split", original, "--out", original, "--overwrite"]) == 2
    assert "is the input XML" in capsys.readouterr().err
    assert sha(original) == before


def test_split_xml_in_another_folder_reads_the_same_images(original, tmp_path):
    out = str(tmp_path / "elsewhere" / "split.xml")
    (tmp_path / "elsewhere").mkdir()
    spim = load_spimdata(original)
    split_dataset(spim, SplitParams(**{**PARAMS, "add_fake_points": False}), out)
    moved = load_spimdata(out)
    assert moved.base_path_type == "absolute" and moved.base_location() == spim.base_location()
    sub = open_view_levels(moved, ViewId(0, 1))[0].data_zyx.compute()
    np.testing.assert_array_equal(sub, open_view_levels(spim, ViewId(0, 0))[0].data_zyx[32:80].compute())


def test_align_runs_on_the_split_xml_and_keeps_sub_views_together(tmp_path, capsys):
    with open_cluster("synchronous") as cluster:
        result = generate_dataset(
            str(tmp_path), SynthParams(tiles=(2, 1, 1), tile_size=(96, 64, 96), overlap=0.3, seed=5), cluster, "numpy"
        )
    out = str(tmp_path / "split.xml")
    assert main(["split", result.xml, "--out", out, "--set", "target_image_size=[96, 64, 48]",
                 "--set", "target_overlap=[16, 16, 16]", "--set", "disable_optimization=true"]) == 0
    assert main(["align", out, "--cluster", "synchronous", "-q", "--skip", "match_rigid", "--skip", "solve_rigid",
                 "--set", "solve_affine.labels=[beads, splitPoints]",
                 "--set", "solve_affine.label_weights={splitPoints: 0.1}"]) == 0
    capsys.readouterr()
    spim = load_spimdata(out)
    where = container_location(spim)
    for a, b in ((0, 1), (1, 2), (3, 4), (4, 5)):
        va, vb = ViewId(0, a), ViewId(0, b)
        assert spim.registrations[va][0].name != spim.registrations[va][-1].name  # the solve added a transform
        ids_a, ids_b = read_correspondences(where, va, "splitPoints")[(vb, "splitPoints")]
        wa = apply_affine(view_affine(spim, va), read_interest_points(where, va, "splitPoints").loc_xyz[ids_a.astype(int)])
        wb = apply_affine(view_affine(spim, vb), read_interest_points(where, vb, "splitPoints").loc_xyz[ids_b.astype(int)])
        # the copies differ by the +-0.25 px jitter alone (z counts twice in world: calibration 2), RMS about 0.5
        assert np.sqrt(np.mean(np.sum((wa - wb) ** 2, axis=1))) < 0.75


def test_split_loader_leaves_out_levels_that_are_not_exact_crops(split):
    original_xml, out, _, _ = split
    orig, spim = load_spimdata(original_xml), load_spimdata(out)
    definition = next(d for d in spim.image_loader.iter("SetupIdDefinition") if d.findtext("NewId") == "1")
    definition.find("min").text = "0 0 33"  # odd z: level 2 (z factor 2) would need half a pixel
    spim.setups[1].size_xyz = (64, 64, 47)
    levels = open_view_levels(spim, ViewId(0, 1))
    assert [lvl.factors_xyz for lvl in levels] == [(1.0, 1.0, 1.0), (2.0, 2.0, 1.0)]
    old = open_view_levels(orig, ViewId(0, 0))
    np.testing.assert_array_equal(levels[1].data_zyx.compute(), old[1].data_zyx[33:80].compute())
