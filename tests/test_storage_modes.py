"""Atomic local writes keep the permissions a reader expects; local paths under a regular file are one-line errors."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rhapso_gpu.cli import main
from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata

ROOT = Path(__file__).parents[1]
SYNTH = ["--tiles", "1x1x1", "--tile-size", "32x32x16", "--seed", "0", "--cluster", "synchronous", "--backend",
         "numpy", "-q"]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_the_umask_is_read_right():
    assert storage.process_umask() == _umask()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o664, 0o604])
def test_a_rewritten_file_keeps_its_mode(tmp_path, mode):
    target = tmp_path / "ground_truth.json"
    target.write_bytes(b"old")
    target.chmod(mode)
    storage.write_bytes_atomic(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == mode
    assert _no_temp_files(tmp_path)


def test_a_new_file_gets_the_umask_mode_and_folders_are_unaffected(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    kept.chmod(0o750)
    storage.write_bytes_atomic(str(kept / "a.json"), b"{}")
    storage.write_bytes_atomic(str(tmp_path / "new" / "deeper" / "b.json"), b"{}", durable=False)
    assert _mode(kept / "a.json") == 0o666 & ~_umask()
    assert _mode(tmp_path / "new" / "deeper" / "b.json") == 0o666 & ~_umask()
    assert _mode(kept) == 0o750  # an existing folder keeps its mode
    assert _mode(tmp_path / "new") == _mode(tmp_path / "new" / "deeper") == 0o777 & ~_umask()  # as os.makedirs


def test_backups_and_the_new_document_keep_the_mode_of_the_one_they_replace(tmp_path):
    assert main(["synth", str(tmp_path / "ds"), *SYNTH]) == 0
    xml = tmp_path / "ds" / "dataset.xml"
    assert _mode(xml) == 0o666 & ~_umask()
    xml.chmod(0o640)
    spim = load_spimdata(str(xml))
    save_spimdata(spim, str(xml))  # the first rewrite: ~1 is a copy of the old file
    save_spimdata(spim, str(xml))  # the second: ~1 moves to ~2
    assert _mode(xml) == 0o640
    assert _mode(str(xml) + "~1") == 0o640
    assert _mode(str(xml) + "~2") == 0o640
    assert not (tmp_path / "ds" / "dataset.xml.new").exists()
    assert _no_temp_files(tmp_path / "ds")


@pytest.mark.parametrize("umask,mode", [(0o027, 0o640), (0o002, 0o664)])
def test_the_cli_writes_documents_readable_as_the_umask_allows(tmp_path, umask, mode):
    proc = subprocess.run([sys.executable, "-m", "rhapso_gpu", "synth", str(tmp_path / "ds"), *SYNTH],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, umask=umask)
    assert proc.returncode == 0, proc.stderr
    for name in ("dataset.xml", "ground_truth.json"):
        assert _mode(tmp_path / "ds" / name) == mode, name


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"rhapso-gpu {command}: error: ")
    return err.strip()


def test_reading_under_a_regular_file_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    assert main(["synth", str(tmp_path / "ds"), *SYNTH]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["info", "ds/dataset.xml/x"]) == 2
    err = _one_line_error(capsys, "info")
    assert err == (f"rhapso-gpu info: error: ds/dataset.xml/x: dataset XML not found "
                   f"({tmp_path / 'ds' / 'dataset.xml'} is a file, not a folder)")


def test_writing_under_a_regular_file_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    assert main(["synth", str(tmp_path / "ds"), *SYNTH]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "ds/dataset.xml", "--truth", "ds/ground_truth.json", "--json", "ds/dataset.xml/r.json",
                 "-q"]) == 2
    err = _one_line_error(capsys, "evaluate")
    assert err == (f"rhapso-gpu evaluate: error: ds/dataset.xml/r.json: cannot write it "
                   f"({tmp_path / 'ds' / 'dataset.xml'} is a file, not a folder)")
    assert _no_temp_files(tmp_path / "ds")


def test_the_errors_already_handled_keep_their_messages(tmp_path):
    with pytest.raises(UserError, match=r"missing\.xml: dataset XML not found$"):
        storage.read_bytes(str(tmp_path / "missing.xml"), what="dataset XML")
    with pytest.raises(UserError, match="is a folder, expected a dataset XML"):
        storage.read_bytes(str(tmp_path), what="dataset XML")
    with pytest.raises(UserError, match="cannot write it \\(is a folder\\)"):
        storage.write_bytes_atomic(str(tmp_path), b"x")


@pytest.mark.parametrize("target", ["plain.txt", "plain.txt/sub"])
def test_synth_into_a_file_or_under_one_is_a_one_line_error(tmp_path, capsys, target):
    (tmp_path / "plain.txt").write_text("keep me")
    assert main(["synth", str(tmp_path / target), "--tiles", "1x1x1", "--cluster", "synchronous"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "plain.txt is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "plain.txt").read_text() == "keep me"
