import os
import subprocess
import sys

import pytest
import torch

from addernet.errors import ConfigError
from addernet.system import available_cores, configure_threads


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_explicit_threads_are_taken_as_they_are():
    assert configure_threads(1) == 1 and torch.get_num_threads() == 1


def test_auto_takes_every_usable_core_shared_among_processes_whatever_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("addernet.system.available_cores", lambda: 8)
    monkeypatch.setattr("os.getloadavg", lambda: (7.9, 7.9, 7.9))  # right after an install: not a reason for fewer
    assert configure_threads("auto") == 8
    assert configure_threads("auto", processes=2) == 4
    assert configure_threads("auto", processes=16) == 1


def test_usable_cores_are_capped_by_the_cgroup_quota(monkeypatch, tmp_path):
    from addernet import system

    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores
    monkeypatch.setattr(system, "_cgroup_cpu_files", lambda: [str(tmp_path / "missing"), str(tmp_path / "cpu.max")])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert system.cgroup_cpu_quota() == 2 and available_cores() == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert system.cgroup_cpu_quota() is None and available_cores() == 4
    (tmp_path / "cpu.cfs_quota_us").write_text("300000\n")  # cgroup v1
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    monkeypatch.setattr(system, "_cgroup_cpu_files", lambda: [str(tmp_path / "cpu.cfs_quota_us")])
    assert available_cores() == 3


@pytest.mark.parametrize("preset, spincount", [({}, "0"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "30000000000"),
                                               ({"GOMP_SPINCOUNT": "1000"}, "1000")])
def test_openmp_threads_sleep_while_waiting_unless_the_user_chose(preset, spincount):
    """libgomp prints the spin count it took (OMP_DISPLAY_ENV): importing addernet first makes it 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", "import addernet, torch; torch.ones(1)"], capture_output=True,
                            text=True, env={**env, **preset, "OMP_DISPLAY_ENV": "VERBOSE"}, check=True)
    assert f"GOMP_SPINCOUNT = '{spincount}'" in result.stderr


def test_auto_respects_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads("auto") == 1
    assert available_cores() >= 1


@pytest.mark.parametrize("bad", [0, -1, "many", True, 1.5])
def test_bad_thread_settings_are_named(bad):
    with pytest.raises(ConfigError, match="threads must be a positive integer or auto"):
        configure_threads(bad)
