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


def test_auto_takes_the_idle_cores_shared_among_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("addernet.system.available_cores", lambda: 8)
    monkeypatch.setattr("addernet.system.busy_cores", lambda: 2)
    assert configure_threads("auto") == 6
    assert configure_threads("auto", processes=2) == 3
    monkeypatch.setattr("addernet.system.busy_cores", lambda: 9)  # an overloaded machine still gets a thread
    assert configure_threads("auto") == 1


def test_auto_respects_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads("auto") == 1
    assert available_cores() >= 1


@pytest.mark.parametrize("bad", [0, -1, "many", True, 1.5])
def test_bad_thread_settings_are_named(bad):
    with pytest.raises(ConfigError, match="threads must be a positive integer or auto"):
        configure_threads(bad)
