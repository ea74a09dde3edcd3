"""storage.Location: one API over a local folder, an S3 bucket (the moto server) and an fsspec filesystem."""

import pickle

import pytest

from pipelines.errors import UserError
from pipelines.storage import Location


def round_trip(root: Location):
    (root / "a" / "b.txt").write_text("hello")
    root.join("a", "c.bin").write_bytes(b"\0\1")
    assert root.is_dir() and (root / "a" / "b.txt").is_file() and not (root / "zz").exists()
    assert root.files() == ["a/b.txt", "a/c.bin"] and root.dirs() == ["a"]
    assert (root / "a").files(recursive=False) == ["b.txt", "c.bin"]
    assert (root / "a" / "b.txt").read_text() == "hello"
    with pytest.raises(RuntimeError):
        with (root / "half.bin").open_output() as f:
            f.write(b"part of it")
            raise RuntimeError("killed while writing")
    assert not (root / "half.bin").exists()  # nothing published, no temporary left behind
    assert root.files() == ["a/b.txt", "a/c.bin"]
    (root / "a" / "c.bin").delete()
    assert root.files() == ["a/b.txt"]


def test_a_local_folder(tmp_path):
    root = Location.of(tmp_path / "x")
    assert root.is_local and root.uri == str(tmp_path / "x") and not root.exists()
    round_trip(root)


def test_a_bucket_on_the_s3_server(s3):
    root = Location.of(f"{s3.bucket()}/prefix")
    assert not root.is_local and root.endpoint == s3.endpoint  # from AWS_ENDPOINT_URL
    round_trip(root)
    copy = pickle.loads(pickle.dumps(root))
    assert copy == root and copy.endpoint == s3.endpoint and (copy / "a" / "b.txt").read_text() == "hello"
    assert b"testing" not in pickle.dumps(root)  # keys never travel: each node reads its own environment
    with pytest.raises(UserError, match="the bucket s3://no-such-bucket does not exist"):
        Location.of("s3://no-such-bucket/x").check_writable("--out")


def test_an_fsspec_filesystem():
    root = Location.of("memory://imf-test/root")  # not a pyarrow scheme: fsspec's, through PyFileSystem
    round_trip(root)


def test_an_unknown_scheme_is_one_clear_error():
    with pytest.raises(UserError, match="no filesystem for the scheme nosuch://"):
        Location.of("nosuch://bucket/x")


def test_a_local_path_that_cannot_be_written_is_refused_naming_the_flag_and_why(tmp_path, monkeypatch):
    import os

    (tmp_path / "notes.txt").write_text("a file where a folder would have to be")
    below_a_file = Location.of(tmp_path / "notes.txt" / "runs")
    with pytest.raises(UserError, match=f"^--storage {below_a_file}: {tmp_path}/notes.txt is a file, so nothing"):
        below_a_file.check_writable("--storage")
    with pytest.raises(UserError, match=f"^cannot write {below_a_file}/m.json: {tmp_path}/notes.txt is a file"):
        (below_a_file / "m.json").write_text("{}")
    assert Location.of(tmp_path / "new" / "deeper").check_writable("--out")  # made when written
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user without write permission (root has it)
    with pytest.raises(UserError, match=f"--out {tmp_path}/new: this user may not write into {tmp_path}: choose a "
                                        "folder you can write to, or change its permissions"):
        Location.of(tmp_path / "new").check_writable("--out")
    monkeypatch.setattr(os, "statvfs", lambda path: type("Stat", (), {"f_flag": os.ST_RDONLY})())
    with pytest.raises(UserError, match=f"{tmp_path} is on a read-only file system: choose a folder on a writable"):
        Location.of(tmp_path / "new").check_writable("--out")
