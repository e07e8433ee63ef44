"""Saving a model never loses data (issue 8, item 2): leftovers of a save killed midway are
removed by the next save to that path, files get the usual mode, symbolic links stay links."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import io as afio

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes, links and signals")


@pytest.fixture(scope="module")
def model() -> autofact.MatrixFactorization:
    data = autofact.Ratings.from_coo([0, 1, 2, 0, 1], [0, 1, 2, 1, 2], [1.0, 2.0, 3.0, 4.0, 5.0],
                                     shape=(3, 3))
    return autofact.MatrixFactorization(rank=2, epochs=2, seed=0).fit(data)


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_processes_are_removed(model, tmp_path):
    # issue 8: a kill -9 during a save left a full-size hidden temporary file; they piled up
    pid = dead_pid()
    stale = [tmp_path / f".model.npz.{pid}.abcd_123.tmp", tmp_path / f".model.npz.{pid}.zzzzzzzz.tmp"]
    kept = [
        tmp_path / f".model.npz.{os.getpid()}.abcdefgh.tmp",  # a save running in this process
        tmp_path / f".model.npz.{os.getppid()}.abcdefgh.tmp",  # ... in a live process
        tmp_path / f".other.npz.{pid}.abcdefgh.tmp",  # another target
        tmp_path / f".model.npz.{pid}.abcdefgh.tmp.bak",  # not our pattern
        tmp_path / f".model.npz.{pid}.ABCDEFGH.tmp",
        tmp_path / ".model.npz.abcdefgh.tmp",
        tmp_path / f"model.npz.{pid}.abcdefgh.tmp",
    ]
    for p in stale + kept:
        p.write_bytes(b"x" * 100)
    model.save(tmp_path / "model.npz")
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert autofact.load(tmp_path / "model.npz").rank == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.npz"] + [p.name for p in kept])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_usual_mode(model, tmp_path, umask):
    # issue 8: saves were 0600 (mkstemp's mode), not 0666 minus the umask
    old = os.umask(umask)
    try:
        model.save(tmp_path / "m.npz")
        reference = tmp_path / "plain"
        reference.write_bytes(b"")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "m.npz").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(reference.stat().st_mode)


def test_a_symlink_is_written_through(model, tmp_path):
    # issue 8: the link stays a link; the file it points to gets the model
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "v1.npz"
    link = tmp_path / "model.npz"
    link.symlink_to(Path("store") / "v1.npz")  # relative, dangling until the first save
    for _ in range(2):
        model.save(link)
        assert link.is_symlink() and os.readlink(link) == os.path.join("store", "v1.npz")
        assert afio.is_model_file(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "store"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["v1.npz"]


def test_a_link_into_a_missing_folder_is_refused(model, tmp_path):
    link = tmp_path / "model.npz"
    link.symlink_to(tmp_path / "gone" / "m.npz")
    with pytest.raises(ValueError, match=r"folder '.*gone' does not exist; create it first"):
        model.save(link)
    assert link.is_symlink()


def test_is_model_file(model, tmp_path):
    model.save(tmp_path / "m.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    (tmp_path / "text").write_text("user,item,rating\n")
    assert afio.is_model_file(tmp_path / "m.npz")
    assert not afio.is_model_file(tmp_path / "other.npz")
    assert not afio.is_model_file(tmp_path / "text")
    assert not afio.is_model_file(tmp_path / "missing")
    assert not afio.is_model_file(tmp_path)


KILLED_MIDWAY = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import autofact

    data = autofact.Ratings.from_coo([0, 1, 2], [0, 1, 2], [1.0, 2.0, 3.0], shape=(3, 3))
    model = autofact.MatrixFactorization(rank=2, epochs=1, seed=0).fit(data)

    def stuck(fh, arrays, streamed=None):  # half the file written, then it hangs until killed
        fh.write(b"PK" + b"x" * 1000)
        fh.flush()
        print("writing", flush=True)
        time.sleep(600)

    autofact.io.savez_plain = stuck
    model.save(sys.argv[1])
""")


def test_a_save_killed_midway_leaves_the_old_model_and_is_cleaned_up(model, tmp_path):
    # issue 8: kill -9 during a save, for real: the earlier model is intact, the temporary
    # file it left is removed by the next save
    path = tmp_path / "model.npz"
    model.save(path)
    before = path.read_bytes()
    with subprocess.Popen([sys.executable, "-c", KILLED_MIDWAY, str(path)],
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p.name != "model.npz"]
    assert len(left) == 1 and left[0].startswith(f".model.npz.{proc.pid}.")
    assert path.read_bytes() == before
    model.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    assert autofact.load(path).rank == 2
