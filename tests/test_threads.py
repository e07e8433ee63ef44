"""The thread policy (issue 10, item 2): how many threads an operation gets, from its size, the
usable cores (affinity, cgroup quota), ``n_threads=`` and the environment; never the momentary
load; torch's process-wide thread count put back after every fit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import autofact
from autofact import MatrixFactorization, Ratings, threads
from autofact.threads import (
    MIN_WORK_PER_THREAD,
    cgroup_cpu_limit,
    check_n_threads,
    env_threads,
    limit_threads,
    max_threads,
    threads_for,
    usable_cores,
)

NO_ENV: dict[str, str] = {}


@pytest.fixture
def torch_threads():
    """torch's thread count, put back after the test whatever it does."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def _ratings(m: int = 40, n: int = 30, density: float = 0.4, seed: int = 0) -> autofact.Ratings:
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < density
    u, i = np.nonzero(mask)
    values = rng.integers(1, 6, size=len(u)).astype(np.float32)
    return autofact.Ratings.from_coo(u, i, values, shape=(m, n))


# ------------------------------------------------------------------ cgroup quota
def _cgroup_v2(tmp_path, cpu_max: str | None, nested: str | None = None):
    root = tmp_path / "cg"
    (root / "app" / "job").mkdir(parents=True)
    if cpu_max is not None:
        (root / "app" / "cpu.max").write_text(cpu_max + "\n")
    if nested is not None:
        (root / "app" / "job" / "cpu.max").write_text(nested + "\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/app/job\n")
    return root, proc


def test_cgroup_v2_quota_in_cores_smallest_on_the_path(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "150000 100000", nested="300000 100000")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)


def test_cgroup_v2_max_is_no_quota(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "max 100000")
    assert cgroup_cpu_limit(root, proc) is None


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    root = tmp_path / "cg"
    d = root / "cpu,cpuacct" / "docker" / "abc"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("50000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)
    (d / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert cgroup_cpu_limit(root, proc) is None


def test_no_cgroup_files_is_no_quota(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent-proc") is None


def test_the_process_quota_is_read_once_and_is_the_files_answer(monkeypatch):
    # issue 10 (cold start): cgroup_cpu_limit() read a dozen files each time a fit asked; the
    # quota is a setting of the machine (never the load), so this process reads them once
    monkeypatch.setattr(threads, "_OWN_LIMIT", {})
    reads: list[Path] = []
    real_read = threads._read

    def counting_read(path: Path) -> str | None:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(threads, "_read", counting_read)
    first = cgroup_cpu_limit()
    n_reads = len(reads)
    assert n_reads >= 1  # /proc/self/cgroup at least
    assert cgroup_cpu_limit() == first and usable_cores() == usable_cores()
    assert len(reads) == n_reads  # answered from what was read
    assert cgroup_cpu_limit("/sys/fs/cgroup", "/proc/self/cgroup") == first  # the files' answer
    assert len(reads) == 2 * n_reads  # given paths are always read
    monkeypatch.setattr(os, "getpid", lambda: -1)  # another process (a forked child) ...
    assert cgroup_cpu_limit() == first
    assert len(reads) == 3 * n_reads  # ... reads its own


def test_the_process_quota_is_kept_apart_from_other_files(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_OWN_LIMIT", {os.getpid(): 0.5})
    root, proc = _cgroup_v2(tmp_path, "150000 100000")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)  # not the kept answer
    assert cgroup_cpu_limit() == 0.5


# ------------------------------------------------------------------ usable cores and the cap
def test_usable_cores_is_affinity_capped_by_the_quota_rounded_up(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2.5)
    assert usable_cores() == 3
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 0.2)
    assert usable_cores() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert usable_cores() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 16.0)
    assert usable_cores() == 1


def test_environment_order_and_openmp_lists():
    assert env_threads(NO_ENV) is None
    assert env_threads({"MKL_NUM_THREADS": "3"}) == 3
    assert env_threads({"MKL_NUM_THREADS": "3", "OMP_NUM_THREADS": "4,2"}) == 4
    assert env_threads({"OMP_NUM_THREADS": "4", "AUTOFACT_NUM_THREADS": "1"}) == 1
    # another library's malformed variable is skipped, not an error
    assert env_threads({"OMP_NUM_THREADS": "lots", "MKL_NUM_THREADS": "2"}) == 2


@pytest.mark.parametrize("raw", ["0", "many", "-2"])
def test_malformed_autofact_num_threads_is_an_error(raw):
    with pytest.raises(ValueError, match=rf"AUTOFACT_NUM_THREADS must be a positive int, got '{raw}'"):
        env_threads({"AUTOFACT_NUM_THREADS": raw})


def test_cap_n_threads_then_environment_then_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 6)
    assert max_threads(None, environ=NO_ENV) == 6
    assert max_threads(None, environ={"OMP_NUM_THREADS": "2"}) == 2
    assert max_threads(3, environ={"OMP_NUM_THREADS": "2"}) == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_n_threads_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=r"n_threads must be a positive int or None .*got "):
        check_n_threads(bad)


def test_n_threads_accepts_numpy_ints():
    assert check_n_threads(np.int64(2)) == 2
    assert check_n_threads(None) is None


def test_size_decides_between_one_thread_and_the_cap():
    # small operations (per-epoch arrays of (users + items) x K^2, tiny matrices): one thread
    assert threads_for(16585 * 11, cap=2) == 1
    assert threads_for(MIN_WORK_PER_THREAD - 1, cap=8) == 1
    assert threads_for(2 * MIN_WORK_PER_THREAD, cap=8) == 2
    assert threads_for(100 * MIN_WORK_PER_THREAD, cap=8) == 8
    assert threads_for(100 * MIN_WORK_PER_THREAD, cap=1) == 1


@pytest.mark.parametrize("cores, n_threads, env, want", [
    (2, None, {}, 1),  # the machine's 2 cores: one worker, one core left to the rest
    (4, None, {}, 3),
    (1, None, {}, 1),
    (2, 2, {}, 2),  # asked for: as asked
    (2, None, {"AUTOFACT_NUM_THREADS": "2"}, 2),
    (2, None, {"OMP_NUM_THREADS": "2"}, 2),
])
def test_gradient_workers_spare_a_core_of_the_machine(monkeypatch, cores, n_threads, env, want):
    # issue 10, item 2: the full-batch gradient's workers (many short operations each, Python
    # between them) lost to one worker beside one busy process on 2 cores (1.22-1.27x); where
    # the cap is the machine's cores they leave one to the rest of it. ALS's workers do not.
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    big = 100 * threads.MIN_WORK_PER_WORKER
    with threads.use_threads(1, n_threads):
        assert threads.workers_for(big, spare_core=True) == want
        assert threads.workers_for(big) == max_threads(n_threads)
    if n_threads is None:  # outside a fit: the same rule
        assert threads.workers_for(big, spare_core=True) == want


def test_objective_gradient_workers_follow_the_spare_core(monkeypatch):
    # issue 10, item 2: the objective asks for spare-core workers: on 2 cores one run of all
    # blocks by default, runs shared by two workers when n_threads=2 is asked for
    from autofact.objective import Objective
    from autofact.sparse import build_patterns

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    r = _ratings()
    obj = Objective(r, dtype=torch.float64)
    obj.patterns = build_patterns(obj.users, obj.items, obj.shape, 37)
    params = obj.init_params(rank=3, seed=0)
    with threads.use_threads(1):
        runs, workers = obj._runs(params, backward=True)
        assert (len(runs), workers) == (1, 1)
    with threads.use_threads(1, 2):
        runs, workers = obj._runs(params, backward=True)
        assert workers == 2 and len(runs) == 8


# ------------------------------------------------------------------ applying it
def test_limit_threads_puts_back_what_it_found_even_on_error(torch_threads):
    torch.set_num_threads(2)
    with limit_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"), limit_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_limit_threads_caps_the_blas_and_restores_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    if not blas.lib_controllers:
        pytest.skip("no BLAS library loaded")
    before = [lib.num_threads for lib in blas.lib_controllers]
    with limit_threads(1):
        now = threadpoolctl.ThreadpoolController().select(user_api="blas")
        assert all(lib.num_threads == 1 for lib in now.lib_controllers)
    after = threadpoolctl.ThreadpoolController().select(user_api="blas")
    assert [lib.num_threads for lib in after.lib_controllers] == before


# ------------------------------------------------------------------ in the model
def _threads_seen_by_the_loss():
    seen: list[int] = []

    def loss(pred, target):
        seen.append(torch.get_num_threads())
        return (pred - target) ** 2

    return loss, seen


@pytest.mark.parametrize("solver", ["als", "adam"])
def test_fit_runs_small_data_single_threaded_and_restores_torch(torch_threads, solver):
    # issue 10: a small fit runs with one thread whatever torch's setting; torch's process-wide
    # thread count is the same after the fit as before
    torch.set_num_threads(2)
    loss, seen = _threads_seen_by_the_loss()
    autofact.MatrixFactorization(rank=3, loss=loss, solver=solver, epochs=2).fit(_ratings())
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_fit_uses_the_cap_for_large_work(torch_threads, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(threads, "MIN_WORK_PER_THREAD", 1)  # every operation "large"
    loss, seen = _threads_seen_by_the_loss()
    autofact.MatrixFactorization(rank=3, loss=loss, solver="als", epochs=1,
                                 n_threads=2).fit(_ratings())
    assert set(seen) == {2}
    assert torch.get_num_threads() == 1


def test_fit_reads_the_environment(torch_threads, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "MIN_WORK_PER_THREAD", 1)
    monkeypatch.setenv("AUTOFACT_NUM_THREADS", "1")
    loss, seen = _threads_seen_by_the_loss()
    autofact.MatrixFactorization(rank=3, loss=loss, solver="als", epochs=1).fit(_ratings())
    assert set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_ranking_fit_restores_torch_threads(torch_threads):
    torch.set_num_threads(2)
    autofact.MatrixFactorization(rank=3, task="ranking", epochs=2).fit(_ratings())
    assert torch.get_num_threads() == 2


def test_seeded_fit_gives_identical_factors_twice(torch_threads):
    # issue 10: the thread count depends on sizes, cores, quota and settings, never on load
    data = _ratings(80, 60)
    a = autofact.MatrixFactorization(rank=4, seed=3).fit(data)
    torch.set_num_threads(1 if torch_threads > 1 else 2)  # what the user set does not leak in
    b = autofact.MatrixFactorization(rank=4, seed=3).fit(data)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)


@pytest.mark.parametrize("bad", [0, -3, 2.0, "4", False])
def test_fit_refuses_a_bad_n_threads(bad):
    model = autofact.MatrixFactorization(n_threads=bad)
    with pytest.raises(ValueError, match=rf"n_threads must be a positive int or None .*got {bad!r}"):
        model.fit(_ratings())


def test_n_threads_is_a_hyper_parameter():
    model = autofact.MatrixFactorization(n_threads=1)
    assert model.get_params()["n_threads"] == 1
    assert "n_threads=1" in repr(model)


def test_a_nested_entry_point_keeps_the_decision_already_made(torch_threads, monkeypatch):
    # issue 10: Objective-level calls inside a fit must not re-decide (nor pay threadpoolctl)
    from autofact.threads import inside_limit, use_threads

    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "MIN_WORK_PER_THREAD", 1)
    assert not inside_limit()
    with limit_threads(1):
        assert inside_limit()
        with use_threads(10**12, unless_decided=True) as n:
            assert n == 1 and torch.get_num_threads() == 1
        with use_threads(10**12, 2) as n:  # an explicit decision still applies
            assert n == 2 and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert not inside_limit()
    with use_threads(10**12, 2, unless_decided=True) as n:  # outside any limit: decides
        assert n == 2 and inside_limit()
    assert torch.get_num_threads() == 2 and not inside_limit()


def test_objective_called_directly_follows_the_policy(torch_threads):
    # issue 10: the gradient benchmark calls Objective.value_and_grad outside any fit; it too
    # runs small work on one thread and puts torch's count back
    from autofact.objective import Objective

    torch.set_num_threads(2)
    loss, seen = _threads_seen_by_the_loss()
    obj = Objective(_ratings(), loss=loss, regularization="l2", beta=0.1)
    params = obj.init_params(3)
    obj.value_and_grad(params)
    obj.value(params)
    assert seen and set(seen[-2:]) == {1}
    assert torch.get_num_threads() == 2


def test_concurrent_limits_never_leave_another_count_behind():
    """Issue 8, item 11: no racy save/restore of torch's process-wide thread count. Limits
    entered and left in any order from several Python threads share the smallest request and
    put back the count found before the first one when the last one ends."""
    import random
    import threading

    import torch

    from autofact.threads import limit_threads

    before = torch.get_num_threads()
    errors: list[str] = []
    start = threading.Barrier(4)

    def worker(n: int, seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(200):
            with limit_threads(n):
                seen = torch.get_num_threads()
                if seen > n:
                    errors.append(f"asked for {n}, ran with {seen}")
                if rng.random() < 0.5:
                    threading.Event().wait(rng.random() / 5000)

    threads = [threading.Thread(target=worker, args=(n, k)) for k, n in enumerate((1, 2, 1, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert torch.get_num_threads() == before


def test_two_fits_at_once_in_two_threads_leave_torch_as_it_was():
    import threading

    import torch

    before = torch.get_num_threads()
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((60, 50)) < 0.3)
    data = Ratings.from_coo(u, i, rng.normal(size=len(u)), shape=(60, 50))
    models = [MatrixFactorization(rank=3, solver="als", n_threads=n) for n in (1, 2)]
    threads = [threading.Thread(target=m.fit, args=(data,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(hasattr(m, "user_factors_") for m in models)
    assert torch.get_num_threads() == before
