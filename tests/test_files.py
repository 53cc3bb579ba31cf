"""files.atomic_path / atomic_dir: all or nothing, normal permissions, durable (fsync before and after the rename);
and the writers that use them (config snapshot, plan outputs, benchmark markdown)."""

import os
import stat
from pathlib import Path

import pytest

from fastrlhf import files
from fastrlhf.files import atomic_dir, atomic_path


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def plain_open_mode(directory: Path) -> int:
    """What a plain open() gives a new file under the current umask."""
    reference = directory / "plain.txt"
    with open(reference, "w") as fh:
        fh.write("x")
    return mode(reference)


def test_save_config_writes_config_yaml_with_the_permissions_of_a_plain_open(tmp_path, umask_022):
    from fastrlhf.config import Config, save_config

    save_config(Config(), tmp_path / "run" / "config.yaml")
    assert mode(tmp_path / "run" / "config.yaml") == plain_open_mode(tmp_path) == 0o644  # was 0600 (mkstemp's)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]  # no temporary left behind


def test_bench_write_section_keeps_normal_permissions(tmp_path, umask_022):
    from fastrlhf.bench.cli import write_section

    doc = tmp_path / "benchmarks.md"
    write_section(doc, "## A", "first\n")
    write_section(doc, "## A", "second\n")
    assert doc.read_text() == "# Benchmarks\n\n## A\n\nsecond\n"
    assert mode(doc) == plain_open_mode(tmp_path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.md", "plain.txt"]


def test_atomic_path_replaces_on_success_and_leaves_dest_alone_on_failure(tmp_path, umask_022):
    dest = tmp_path / "out.json"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert dest.read_text() == "old" and sorted(tmp_path.iterdir()) == [dest]
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".json"
        tmp.write_text("new")
    assert dest.read_text() == "new" and sorted(tmp_path.iterdir()) == [dest]
    assert mode(dest) == 0o644


def test_atomic_dir_swaps_whole_trees_with_normal_permissions(tmp_path, umask_022):
    dest = tmp_path / "ckpt"
    with atomic_dir(dest) as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "weights.bin").write_bytes(b"1")
        os.chmod(tmp / "sub" / "weights.bin", 0o600)
    assert mode(dest) == mode(dest / "sub") == 0o755 and mode(dest / "sub" / "weights.bin") == 0o644
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError
    assert sorted(p.name for p in dest.rglob("*")) == ["sub", "weights.bin"]
    with atomic_dir(dest) as tmp:
        (tmp / "new").write_text("x")
    assert [p.name for p in dest.iterdir()] == ["new"] and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.fixture
def journal(monkeypatch):
    """Record every fsync (what it flushed) and every rename, in order."""
    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, Path.rename

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino, st.st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.stat(src).st_ino))
        real_replace(src, dst)

    def rename(self, target):
        events.append(("rename", os.stat(self).st_ino))
        return real_rename(self, target)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(Path, "rename", rename)
    return events


def test_atomic_path_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, journal):
    dest = tmp_path / "metrics.jsonl"
    with atomic_path(dest) as tmp:
        tmp.write_text("0123456789")
        inode = os.stat(tmp).st_ino
    parent = os.stat(tmp_path).st_ino
    assert journal == [("fsync", "file", inode, 10), ("rename", inode), ("fsync", "dir", parent, journal[2][3])]


def test_atomic_dir_fsyncs_every_file_and_directory_before_the_swap_and_the_parent_after(tmp_path, journal):
    dest = tmp_path / "export"
    dest.mkdir()
    with atomic_dir(dest) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"abc")
        (tmp / "config.json").write_text("{}")
        inodes = {os.stat(p).st_ino for p in [tmp, tmp / "sub", tmp / "sub" / "a.bin", tmp / "config.json"]}
        top = os.stat(tmp).st_ino
    renames = [i for i, event in enumerate(journal) if event[0] == "rename"]
    synced_before = {event[2] for event in journal[:renames[0]] if event[0] == "fsync"}
    assert synced_before == inodes  # every file (with its data) and every directory of the new tree
    assert journal[renames[-1]][1] == top  # the new tree is renamed in last ...
    assert journal[renames[-1] + 1:] == [("fsync", "dir", os.stat(tmp_path).st_ino, journal[-1][3])]  # ... then the parent
    assert (dest / "sub" / "a.bin").read_bytes() == b"abc"
