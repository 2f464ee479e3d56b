"""How many workers 'auto' means, and where they run: affinity, physical cores, cgroup quotas."""
import warnings

import pytest

from dpnn import placement
from dpnn.placement import cgroup_cpu_limit, physical_cores, plan_placement, resolve_workers, usable_cores


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_sysfs(tmp_path, cores):
    """cores: {cpu: (package, core)} -> a /sys/devices/system/cpu-like tree."""
    for cpu, (package, core) in cores.items():
        write(tmp_path / f"cpu{cpu}" / "topology" / "physical_package_id", f"{package}\n")
        write(tmp_path / f"cpu{cpu}" / "topology" / "core_id", f"{core}\n")
    return str(tmp_path)


def test_hyperthread_siblings_form_one_core(tmp_path):
    sysfs = fake_sysfs(tmp_path, {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1), 4: (1, 0)})
    assert physical_cores([0, 1, 2, 3, 4], sysfs) == [(0, 2), (1, 3), (4,)]
    assert physical_cores([1, 3], sysfs) == [(1, 3)]


def test_without_topology_every_cpu_counts_as_a_core(tmp_path):
    assert physical_cores([0, 1, 5], str(tmp_path)) == [(0,), (1,), (5,)]


@pytest.mark.parametrize("cpu_max, expected", [("max 100000", None), ("150000 100000", 1.5),
                                               ("400000 100000", 4.0)])
def test_cgroup_v2_quota(tmp_path, cpu_max, expected):
    write(tmp_path / "proc_cgroup", "0::/user.slice/job\n")
    write(tmp_path / "cg" / "user.slice" / "job" / "cpu.max", cpu_max + "\n")
    assert cgroup_cpu_limit(str(tmp_path / "proc_cgroup"), str(tmp_path / "cg")) == expected


def test_cgroup_v2_parent_quota_applies_to_children(tmp_path):
    write(tmp_path / "proc_cgroup", "0::/outer/inner\n")
    write(tmp_path / "cg" / "outer" / "cpu.max", "200000 100000\n")
    write(tmp_path / "cg" / "outer" / "inner" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "proc_cgroup"), str(tmp_path / "cg")) == 2.0


def test_cgroup_v2_inside_a_container_reads_the_mount_itself(tmp_path):
    """The path names the host's cgroup, but the container sees its own cgroup at the root."""
    write(tmp_path / "proc_cgroup", "0::/kubepods/pod123/abc\n")
    write(tmp_path / "cg" / "cpu.max", "300000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "proc_cgroup"), str(tmp_path / "cg")) == 3.0


@pytest.mark.parametrize("quota, expected", [("-1", None), ("50000", 0.5), ("300000", 3.0)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, expected):
    write(tmp_path / "proc_cgroup", "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n")
    write(tmp_path / "cg" / "cpu,cpuacct" / "docker" / "x" / "cpu.cfs_quota_us", quota + "\n")
    write(tmp_path / "cg" / "cpu,cpuacct" / "docker" / "x" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "proc_cgroup"), str(tmp_path / "cg")) == expected


def test_no_cgroup_information_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path / "cg")) is None


def machine(monkeypatch, cpus, cores_of, limit=None):
    """Pretend this process may use ``cpus`` grouped into physical cores by ``cores_of``."""
    monkeypatch.setattr(placement, "usable_cpus", lambda: list(cpus))
    monkeypatch.setattr(placement, "physical_cores", lambda c, sysfs=None: cores_of)
    monkeypatch.setattr(placement, "cgroup_cpu_limit", lambda *a: limit)


def test_auto_counts_physical_cores_and_the_quota(monkeypatch):
    machine(monkeypatch, range(8), [(0, 4), (1, 5), (2, 6), (3, 7)])
    assert resolve_workers("auto") == usable_cores() == 4
    machine(monkeypatch, range(8), [(0, 4), (1, 5), (2, 6), (3, 7)], limit=2.5)
    assert resolve_workers("auto") == 2
    machine(monkeypatch, range(8), [(0, 4), (1, 5), (2, 6), (3, 7)], limit=0.5)
    assert resolve_workers("auto") == 1


def test_auto_on_this_machine_is_at_least_one():
    assert resolve_workers("auto") >= 1


@pytest.mark.parametrize("value, expected", [(3, 3), ("3", 3), (" AUTO ", None)])
def test_resolve_workers_accepts_ints_and_auto(value, expected):
    assert resolve_workers(value) == (expected or usable_cores())


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "many", None])
def test_resolve_workers_refuses_nonsense(value):
    with pytest.raises(ValueError, match="positive int or 'auto'"):
        resolve_workers(value)


def test_each_worker_gets_its_own_cores(monkeypatch):
    machine(monkeypatch, range(8), [(0, 4), (1, 5), (2, 6), (3, 7)])
    p = plan_placement(2)
    assert p.threads_per_worker == 2 and not p.oversubscribed
    assert p.cpus == ((0, 4, 1, 5), (2, 6, 3, 7))
    p = plan_placement(4, threads_per_worker=1)
    assert p.cpus == ((0, 4), (1, 5), (2, 6), (3, 7))


def test_deterministic_mode_defaults_to_one_blas_thread(monkeypatch):
    machine(monkeypatch, range(4), [(0,), (1,), (2,), (3,)])
    assert plan_placement(2, deterministic=True).threads_per_worker == 1
    assert plan_placement(2, threads_per_worker=2, deterministic=True).threads_per_worker == 2


def test_oversubscription_warns_once_and_does_not_pin(monkeypatch):
    machine(monkeypatch, range(2), [(0,), (1,)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            p = plan_placement(3, threads_per_worker=1)
    assert p.oversubscribed and p.cpus == (None, None, None)
    assert len([w for w in caught if "oversubscribed" in str(w.message)]) == 1


def test_threads_per_worker_must_be_positive(monkeypatch):
    machine(monkeypatch, range(2), [(0,), (1,)])
    with pytest.raises(ValueError, match="threads_per_worker"):
        plan_placement(1, threads_per_worker=0)


def test_the_oversubscription_warning_points_at_the_callers_line(monkeypatch):
    """Issue 21: `workers=4` on 2 cores echoed a line of dpnn's own source; the warning now names
    the caller's line, whichever path inside dpnn raised it."""
    from dpnn.workers import DataParallel

    from conftest import cnn
    machine(monkeypatch, range(2), [(0,), (1,)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dp = DataParallel(cnn(), workers=4, threads_per_worker=1)      # no process starts yet
    dp.close()
    hits = [w for w in caught if "oversubscribed" in str(w.message)]
    assert len(hits) == 1 and hits[0].filename == __file__, [(w.filename, w.lineno) for w in hits]
