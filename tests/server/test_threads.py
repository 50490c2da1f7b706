"""ONNX Runtime threads sized from the CPUs the process may use (affinity, cgroup v2 quota), as
one budget shared by the loaded models, small models single-threaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from maas_server.repository import ModelRepository
from maas_server.threads import ThreadBudget, available_cpus, cgroup_cpu_quota
from tests import models


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "expected"),
    [
        ({0, 1, 2, 3}, None, 4),  # no cgroup file
        ({0, 1, 2, 3}, "max 100000\n", 4),  # no quota
        ({0, 1, 2, 3}, "150000 100000\n", 2),  # 1.5 CPUs: two threads may run
        ({0, 1, 2, 3}, "50000 100000\n", 1),
        ({0, 1, 2, 3}, "800000 100000\n", 4),  # a quota above the affinity
        ({5}, "400000 100000\n", 1),  # taskset to one core
        (set(range(64)), "200000 100000", 2),  # a container of 2 CPUs on a big machine
        ({0, 1, 2, 3}, "garbage", 4),
        ({0, 1, 2, 3}, "-1 100000", 4),
        ({0, 1, 2, 3}, "", 4),
    ],
)
def test_available_cpus_reads_affinity_and_cgroup_quota(
    tmp_path: Path, affinity: set[int], cpu_max: str | None, expected: int
) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert available_cpus(affinity, path) == expected


def test_cgroup_quota_of_non_ascii_file(tmp_path: Path) -> None:
    path = tmp_path / "cpu.max"
    path.write_bytes(b"\xff\xfe 100000")
    assert cgroup_cpu_quota(path) is None


def test_available_cpus_of_this_process_ignores_the_machine_count() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_budget_is_shared_between_models() -> None:
    budget = ThreadBudget(cpus=8)
    assert budget.share("a", 2) == 4
    budget.claim("a", 8)
    assert budget.share("b", 1) == 1  # nothing left: single-threaded, never zero
    assert budget.share("a", 2) == 4  # a reload of "a" gets its own share again
    budget.claim("a", 4)
    assert budget.share("b", 2) == 2
    budget.release("a")
    assert budget.share("b", 1) == 8
    budget.claim("b", 0)  # single-threaded sessions claim nothing
    assert budget.claims() == {}


def put(root: Path, name: str, config: dict[str, object]) -> None:
    models.save(models.mlp_model(), root / name / "1" / "model.onnx")
    (root / name / "config.json").write_text(json.dumps(config))


def test_small_models_run_single_threaded_and_claim_nothing(tmp_path: Path) -> None:
    put(tmp_path, "small", {})
    repo = ModelRepository(tmp_path, threads=ThreadBudget(cpus=4))
    repo.load("small")
    assert repo.get("small").onnx.intra_op_threads == 1  # its warm run is far under 1 ms
    assert repo.threads.claims() == {}


def test_larger_models_split_the_budget(tmp_path: Path) -> None:
    put(tmp_path, "big", {"instance_count": 2})
    put(tmp_path, "late", {})
    cpu = {"name": "CPUExecutionProvider", "options": {"intra_op_num_threads": 3}}
    put(tmp_path, "explicit", {"execution_providers": [cpu]})
    # small_model_us=0: every model counts as large (no warm run takes under 0 microseconds)
    repo = ModelRepository(tmp_path, threads=ThreadBudget(cpus=4), small_model_us=0)

    def threads_of(name: str) -> int:
        record = repo.load(name)
        assert record.state == "READY", record.reason
        return repo.get(name).onnx.intra_op_threads

    assert threads_of("big") == 2  # 4 CPUs split between its 2 instances
    assert repo.threads.claims() == {"big": 4}
    assert threads_of("late") == 1  # the budget is spent: never more threads than CPUs
    assert threads_of("big") == 2  # a reload gets its own share again
    assert threads_of("explicit") == 3  # the configuration's own setting wins
    repo.unload("big")
    assert repo.threads.claims() == {"explicit": 3}
    assert threads_of("late") == 1
    repo.unload("explicit")
    assert threads_of("late") == 4
    repo.close()
