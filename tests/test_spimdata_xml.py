"""BigStitcher dataset.xml: round trip, parsed values, atomic saves with backups, bad input."""

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from xml_equivalence import assert_equivalent

from rhapso_gpu.errors import UserError
from rhapso_gpu.io.spimdata import ViewId, ViewTransform
from rhapso_gpu.io.spimdata_xml import (
    format_number,
    load_spimdata,
    parse_integer_pattern,
    parse_spimdata,
    save_spimdata,
    spimdata_to_xml,
)

DATA = Path(__file__).parent / "data"
FIXTURES = Path(__file__).parent / "data" / "bigstitcher"
REAL_FILES = sorted(FIXTURES.glob("*.xml"))
HAND_WRITTEN = sorted(DATA.glob("loader_*.xml"))


def test_the_real_bigstitcher_fixtures_are_present():
    assert len(REAL_FILES) == 2, f"expected the two BigStitcher XMLs in {FIXTURES}"


@pytest.mark.parametrize("path", REAL_FILES + HAND_WRITTEN, ids=lambda p: p.name)
def test_round_trip_is_equivalent(path):
    original = path.read_bytes()
    written = spimdata_to_xml(parse_spimdata(original, source=str(path)))
    assert_equivalent(original, written)
    # and writing what we wrote changes nothing at all
    assert spimdata_to_xml(parse_spimdata(written)) == written


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_round_trip_of_bigstitcher_files_is_byte_identical(path):
    original = path.read_bytes().replace(b"\r\n", b"\n")
    assert spimdata_to_xml(parse_spimdata(original)) == original


def test_drosophila_values():
    spim = load_spimdata(str(FIXTURES / "drosophila_dataset_interest_points.xml"))
    assert spim.image_format == "spimreconstruction.filemap2"
    assert spim.timepoints.kind == "list" and spim.timepoints.ids == [18, 30]
    assert len(spim.setups) == 7 and len(spim.view_ids()) == 14
    assert spim.setups[1].size_xyz == (1388, 1040, 91)
    assert spim.setups[1].voxel_size.unit == "µm"
    assert spim.setups[1].voxel_size.size_xyz == (0.7310780550106993, 0.7310780550106993, 2.0)
    assert spim.setups[1].attributes == {"illumination": 0, "channel": 0, "tile": 0, "angle": 45}
    assert spim.attribute_entity("angle", 45).field_text("degrees") == "45.0"
    names = [t.name for t in spim.registrations[ViewId(18, 1)]]
    assert names == ["Rotation around axis (1.0, 0.0, 0.0) by 45.0 degrees", "calibration"]
    ref = next(r for r in spim.interest_points if r.view == ViewId(30, 6))
    assert ref.label == "beads" and ref.path == "tpId_30_viewSetupId_6/beads"
    assert "downsampleXY=4" in ref.params


def test_hand_written_values():
    spim = load_spimdata(str(DATA / "loader_zarr_v3.xml"))
    assert spim.setups[0].extra[0].tag == "acquisitionNote"
    assert spim.attribute_entity("tile", 1).field_text("location") == "28.0 0.0 0.0"
    assert spim.bounding_boxes[0].name == "embryo" and spim.bounding_boxes[0].min_xyz == (-5, 0, 0)
    pr = spim.stitching_results[0]
    assert pr.setups_a == [0] and pr.setups_b == [1] and pr.correlation == 0.93 and pr.hash == 212.0
    np.testing.assert_array_equal(pr.shift[:, 3], [-1.5, 0.25, 0.0])
    assert pr.overlap_box == (56.0, 0.0, 0.0, 63.0, 47.0, 63.0)
    unknown = [e for e in spim.layout if not isinstance(e, str)]
    assert [e.tag for e in unknown] == ["PointSpreadFunctions", "IntensityAdjustments", "ProcessingHistory"]

    n5 = load_spimdata(str(DATA / "loader_n5.xml"))
    assert n5.timepoints.ids == [0, 5] and n5.timepoints.names == ["0", "late"]
    assert n5.missing_views == [ViewId(5, 1)]
    assert n5.view_ids() == [ViewId(0, 0), ViewId(0, 1), ViewId(5, 0)]
    generic = n5.registrations[ViewId(5, 0)][0]
    assert generic.raw is not None and generic.raw.get("class").endswith("ThinplateSplineTransform")

    aind = load_spimdata(str(DATA / "loader_zarr_aind.xml"))
    assert aind.timepoints.kind == "pattern" and aind.timepoints.ids == [0]
    assert aind.base_location() == "s3://aind-open-data/exaSPIM_000000_2026-01-01"
    zgroup = aind.image_loader.find("zgroups/zgroup")
    assert zgroup.get("timepoint") == "0" and zgroup.find("path").text == "tile_x_0000_y_0000_z_0000_ch_488.zarr"


def test_edits_are_written():
    spim = load_spimdata(str(DATA / "loader_zarr_v3.xml"))
    shift = np.eye(4)
    shift[:3, 3] = [1.5, -2.0, 0.25]
    spim.registrations[ViewId(0, 1)].insert(0, ViewTransform.from_matrix("Rigid correction", shift))
    again = parse_spimdata(spimdata_to_xml(spim))
    transforms = again.registrations[ViewId(0, 1)]
    assert [t.name for t in transforms] == ["Rigid correction", "Translation to Regular Grid", "calibration"]
    np.testing.assert_array_equal(transforms[0].affine[:, 3], [1.5, -2.0, 0.25])
    # the untouched unknown element is still there, unchanged
    assert ET.fromstring(spimdata_to_xml(again)).find("ProcessingHistory/Step").text == "resave"


@pytest.mark.parametrize(
    "pattern, ids",
    [("0", [0]), ("0-3", [0, 1, 2, 3]), ("1,3,5", [1, 3, 5]), ("0-10:5", [0, 5, 10]), ("2-3, 7", [2, 3, 7])],
)
def test_integer_patterns(pattern, ids):
    assert parse_integer_pattern(pattern) == ids


@pytest.mark.parametrize(
    "value, text",
    [(1.0, "1.0"), (0.5, "0.5"), (6.123233995736766e-17, "6.123233995736766E-17"), (1e7, "1.0E7"),
     (0.001, "0.001"), (0.0001, "1.0E-4"), (-139.51998600000002, "-139.51998600000002"), (3, "3")],
)
def test_numbers_are_written_as_java_does(value, text):
    assert format_number(value) == text
    assert float(text) == value


# --- saving ------------------------------------------------------------------------------------


def test_save_is_atomic_and_keeps_five_rolling_backups(tmp_path):
    target = tmp_path / "dataset.xml"
    spim = load_spimdata(str(DATA / "loader_zarr_v3.xml"))
    versions = []
    for i in range(7):
        spim.bounding_boxes[0].name = f"version{i}"
        save_spimdata(spim, str(target))
        versions.append(target.read_bytes())
    assert target.read_bytes() == versions[6]
    for k in range(1, 6):
        assert (tmp_path / f"dataset.xml~{k}").read_bytes() == versions[6 - k]
    assert not (tmp_path / "dataset.xml~6").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.startswith("dataset.xml")]
    assert leftovers == [] and not (tmp_path / "dataset.xml.new").exists()


def test_a_failed_save_leaves_the_file_and_backups_untouched(tmp_path, monkeypatch):
    target = tmp_path / "dataset.xml"
    spim = load_spimdata(str(DATA / "loader_zarr_v3.xml"))
    save_spimdata(spim, str(target))
    before = target.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    spim.bounding_boxes[0].name = "never written"
    with pytest.raises(OSError):
        save_spimdata(spim, str(target))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.xml"]


# --- bad input -----------------------------------------------------------------------------------


def _one_line(err: UserError) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_malformed_xml(tmp_path):
    bad = tmp_path / "dataset.xml"
    bad.write_text("<SpimData><BasePath>.</BasePath>\n<SequenceDescription>")
    with pytest.raises(UserError) as e:
        load_spimdata(str(bad))
    assert _one_line(e.value).startswith(f"{bad}: not well-formed XML at line 2")


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as e:
        load_spimdata(str(tmp_path / "nope.xml"))
    assert _one_line(e.value) == f"{tmp_path / 'nope.xml'}: dataset XML not found"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace("<affine>1.0 0.0 0.0 56.0 0.0 1.0 0.0 0.0 0.0 0.0 1.0 0.0</affine>",
                             "<affine>1.0 0.0 0.0 56.0</affine>"),
         ('<ViewRegistration timepoint="0" setup="1"> <ViewTransform> \'Translation to Regular Grid\': '
         "<affine> must hold 12 numbers, got 4")),
        (lambda s: s.replace("<size>64 48 16</size>", "<size>64 48</size>", 1),
         "<ViewSetup> id=0: <size> must hold 3 numbers, got 2"),
        (lambda s: s.replace('<Timepoints type="range">', '<Timepoints type="ranges">'),
         "<Timepoints>: unknown type='ranges'"),
        (lambda s: s.replace("SpimData", "SpimDataset"), "expected <SpimData> as the root element"),
        (lambda s: s.replace('<ViewRegistration timepoint="0" setup="0">', '<ViewRegistration setup="0">'),
         "<ViewRegistration>: missing attribute timepoint="),
    ],
    ids=["affine-count", "size-count", "timepoint-type", "root", "registration-attr"],
)
def test_invalid_documents_name_the_element(tmp_path, edit, message):
    bad = tmp_path / "dataset.xml"
    bad.write_text(edit((DATA / "loader_zarr_v3.xml").read_text()))
    with pytest.raises(UserError) as e:
        load_spimdata(str(bad))
    assert message in _one_line(e.value)
    assert str(bad) in str(e.value)
