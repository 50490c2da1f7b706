"""The scheduler with real models: exact row routing, ordering, priorities, timeouts, queue limits,
cancellations, and every accepted request answered exactly once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from maas_server import Settings, create_app
from maas_server.batching import QueueFullError, QueueTimeoutError
from maas_server.errors import BadRequestError
from maas_server.model_version import ModelVersion
from maas_server.repository import ModelRepository
from tests import models
from tests.conftest import start_server

SLOW_ROWS_PER_SECOND = models.SLOW_MODEL_BATCH / 0.5  # slow_model(0.5) takes ~0.5 s for 256 rows


def load(tmp_path: Path, name: str, model: onnx.ModelProto, config: dict[str, Any]) -> ModelVersion:
    models.save(model, tmp_path / name / "1" / "model.onnx")
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    record = ModelRepository(tmp_path).load(name)
    assert record.state == "READY", record.reason
    loaded = record.versions[1].model
    assert loaded is not None
    return loaded


def slow_input(seconds: float) -> dict[str, np.ndarray[Any, Any]]:
    rows = max(1, int(seconds * SLOW_ROWS_PER_SECOND))
    return {"x": np.full((rows, models.SLOW_MODEL_WIDTH), 1e-3, dtype=np.float32)}


def two_dim_identity() -> onnx.ModelProto:
    return models.identity_model(TensorProto.FLOAT, ["batch", "width"])


@pytest.fixture(scope="module")
def identity_batched(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    config = {
        "max_batch_size": 16,
        "dynamic_batching": {"max_queue_delay_microseconds": 20_000},
    }
    return load(tmp_path_factory.mktemp("ib"), "ident", two_dim_identity(), config)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    requests=st.lists(
        st.tuples(st.integers(1, 5), st.sampled_from([2, 3, 7])), min_size=1, max_size=24
    )
)
def test_rows_are_routed_exactly(
    identity_batched: ModelVersion, requests: list[tuple[int, int]]
) -> None:
    """Random mixes of batch sizes and widths: each request gets exactly its own rows back, and
    requests of different widths are never merged (they could not be concatenated)."""

    async def scenario() -> None:
        before = identity_batched.stats.execution_count
        inputs = []
        for index, (rows, width) in enumerate(requests):
            base = index * 1000
            inputs.append(
                np.arange(base, base + rows * width, dtype=np.float32).reshape(rows, width)
            )
        results = await asyncio.gather(
            *[identity_batched.scheduler.infer({"x": x}, ["y"]) for x in inputs]
        )
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(result["y"], x)
        executions = identity_batched.stats.execution_count - before
        assert executions <= len(requests)
        widths = {w for _, w in requests}
        assert executions >= len(widths)

    asyncio.run(scenario())


async def test_concurrent_requests_are_merged(identity_batched: ModelVersion) -> None:
    before_exec = identity_batched.stats.execution_count
    xs = [np.full((1, 3), i, dtype=np.float32) for i in range(16)]
    results = await asyncio.gather(*[identity_batched.scheduler.infer({"x": x}, ["y"]) for x in xs])
    assert [float(r["y"][0, 0]) for r in results] == list(range(16))
    assert identity_batched.stats.execution_count - before_exec < 16
    assert max(identity_batched.stats.batches) > 1


async def test_preferred_batch_size_dispatches_without_waiting(tmp_path: Path) -> None:
    config = {
        "max_batch_size": 8,
        "dynamic_batching": {
            "max_queue_delay_microseconds": 60_000_000,
            "preferred_batch_size": [4],
        },
    }
    model = load(tmp_path, "m", two_dim_identity(), config)
    start = time.monotonic()
    xs = [np.full((1, 2), i, dtype=np.float32) for i in range(4)]
    await asyncio.gather(*[model.scheduler.infer({"x": x}, ["y"]) for x in xs])
    # Far below the 60 s delay (a busy machine still runs 4 rows well within it).
    assert time.monotonic() - start < 20.0
    assert model.stats.batches.keys() == {4}


async def test_queue_delay_holds_a_lone_request(tmp_path: Path) -> None:
    config = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 200_000}}
    model = load(tmp_path, "m", two_dim_identity(), config)
    start = time.monotonic()
    await model.scheduler.infer({"x": np.zeros((1, 2), np.float32)}, ["y"])
    waited = time.monotonic() - start
    assert waited >= 0.19
    assert model.stats.queue.ns >= 190_000_000


async def completion_order(
    model: ModelVersion, feeds: list[dict[str, Any]], **kwargs: Any
) -> list[int]:
    order: list[int] = []

    async def one(index: int, feed: dict[str, Any]) -> None:
        await model.scheduler.infer(feed, ["y"], **kwargs)
        order.append(index)

    tasks = []
    for index, feed in enumerate(feeds):
        tasks.append(asyncio.create_task(one(index, feed)))
        await until(lambda: model.stats.pending == len(tasks))
    await asyncio.gather(*tasks)
    return order


@pytest.mark.parametrize("preserve", [True, False])
async def test_preserve_ordering(tmp_path: Path, preserve: bool) -> None:
    config = {
        "instance_count": 2,
        "dynamic_batching": {"preserve_ordering": preserve},
    }
    model = load(tmp_path, "slow", models.slow_model(0.5), config)
    feeds = [slow_input(0.4), slow_input(0.01)]
    order = await completion_order(model, feeds)
    # Without preserve_ordering the small request, run on the second instance, finishes first.
    assert order == ([0, 1] if preserve else [1, 0])


async def test_priorities_jump_the_queue(tmp_path: Path) -> None:
    config = {"dynamic_batching": {"priority_levels": 2}}
    model = load(tmp_path, "slow", models.slow_model(0.5), config)
    order: list[str] = []

    async def one(tag: str, seconds: float, priority: int | None) -> None:
        await model.scheduler.infer(slow_input(seconds), ["y"], priority=priority)
        order.append(tag)

    gate = Gate(model)
    blocker = asyncio.create_task(one("blocker", 0.2, None))
    await gate.wait_entered()
    low = [asyncio.create_task(one(f"low{i}", 0.01, 2)) for i in range(3)]
    unspecified = asyncio.create_task(one("default", 0.01, None))
    await until(lambda: model.scheduler.queued == 4)
    high = asyncio.create_task(one("high", 0.01, 1))
    await until(lambda: model.scheduler.queued == 5)
    gate.open()
    await asyncio.gather(blocker, *low, unspecified, high)
    assert order[0] == "blocker"
    assert order[1] == "high"
    assert order[2:] == ["low0", "low1", "low2", "default"]


async def test_priority_out_of_range_is_400(tmp_path: Path) -> None:
    model = load(tmp_path, "m", two_dim_identity(), {"dynamic_batching": {"priority_levels": 2}})
    with pytest.raises(BadRequestError, match="priority 3 is out of range"):
        await model.scheduler.infer({"x": np.zeros((1, 2), np.float32)}, ["y"], priority=3)


async def test_timeout_reject(tmp_path: Path) -> None:
    config = {
        "dynamic_batching": {"default_queue_policy": {"default_timeout_microseconds": 50_000}}
    }
    model = load(tmp_path, "slow", models.slow_model(0.5), config)
    gate = Gate(model)
    blocker = asyncio.create_task(model.scheduler.infer(slow_input(0.3), ["y"]))
    await gate.wait_entered()
    started = time.monotonic()
    with pytest.raises(QueueTimeoutError, match="timed out after waiting"):
        await model.scheduler.infer(slow_input(0.01), ["y"])
    assert time.monotonic() - started >= 0.05
    # Answered when the timeout ran out, not when an instance came free: the blocker still runs.
    assert not blocker.done()
    gate.open()
    await blocker
    assert model.stats.rejected["timeout"] == 1


async def test_timeout_override_only_shortens(tmp_path: Path) -> None:
    config = {
        "dynamic_batching": {
            "default_queue_policy": {
                "default_timeout_microseconds": 10_000_000,
                "allow_timeout_override": True,
            }
        }
    }
    model = load(tmp_path, "slow", models.slow_model(0.5), config)
    gate = Gate(model)
    blocker = asyncio.create_task(model.scheduler.infer(slow_input(0.3), ["y"]))
    await gate.wait_entered()
    with pytest.raises(QueueTimeoutError):
        await model.scheduler.infer(slow_input(0.01), ["y"], timeout_us=30_000)
    gate.open()
    # A longer timeout than the default is not granted; a generous one is simply served.
    result = await model.scheduler.infer(slow_input(0.01), ["y"], timeout_us=60_000_000)
    assert "y" in result
    await blocker


async def test_timeout_delay_moves_request_behind_the_others(tmp_path: Path) -> None:
    config = {
        "dynamic_batching": {
            "default_queue_policy": {
                "timeout_action": "DELAY",
                "default_timeout_microseconds": 10_000_000,
                "allow_timeout_override": True,
            }
        }
    }
    model = load(tmp_path, "slow", models.slow_model(0.5), config)
    order: list[str] = []

    async def one(tag: str, seconds: float, timeout: int | None = None) -> None:
        await model.scheduler.infer(slow_input(seconds), ["y"], timeout_us=timeout)
        order.append(tag)

    gate = Gate(model)
    blocker = asyncio.create_task(one("blocker", 0.3))
    await gate.wait_entered()
    delayed = asyncio.create_task(one("delayed", 0.01, 20_000))
    await until(lambda: model.scheduler.delayed == 1)  # its timeout ran out behind the blocker
    others = [asyncio.create_task(one(f"other{i}", 0.01)) for i in range(2)]
    await until(lambda: model.scheduler.queued == 3)
    gate.open()
    await asyncio.gather(blocker, delayed, *others)
    assert order == ["blocker", "other0", "other1", "delayed"]


async def test_full_queue_rejects_at_once_with_retry_after(tmp_path: Path) -> None:
    config = {"dynamic_batching": {"default_queue_policy": {"max_queue_size": 2}}}
    model = load(tmp_path, "slow", models.slow_model(0.5), config)
    gate = Gate(model)
    blocker = asyncio.create_task(model.scheduler.infer(slow_input(0.3), ["y"]))
    await gate.wait_entered()
    queued = [asyncio.create_task(model.scheduler.infer(slow_input(0.01), ["y"])) for _ in range(2)]
    await until(lambda: model.scheduler.queued == 2)
    with pytest.raises(QueueFullError, match="queue is full") as info:
        await model.scheduler.infer(slow_input(0.01), ["y"])
    assert int(info.value.headers["Retry-After"]) >= 1
    assert int(info.value.headers["retry-after-ms"]) > 0
    gate.open()
    await asyncio.gather(blocker, *queued)


async def test_cancelled_requests_leave_the_queue(tmp_path: Path) -> None:
    model = load(tmp_path, "slow", models.slow_model(0.5), {"dynamic_batching": {}})
    gate = Gate(model)
    blocker = asyncio.create_task(model.scheduler.infer(slow_input(0.2), ["y"]))
    await gate.wait_entered()
    doomed = [asyncio.create_task(model.scheduler.infer(slow_input(0.2), ["y"])) for _ in range(3)]
    survivor = asyncio.create_task(model.scheduler.infer(slow_input(0.01), ["y"]))
    await until(lambda: model.scheduler.queued == 4)
    for task in doomed:
        task.cancel()
    await until(lambda: model.scheduler.queued == 1)
    gate.open()
    await asyncio.gather(blocker, survivor)
    assert model.stats.execution_count == 2  # the cancelled ones never ran
    assert model.stats.rejected["cancelled"] == 3


async def test_every_request_answered_exactly_once(identity_batched: ModelVersion) -> None:
    rng = np.random.default_rng(7)
    answered: list[int] = []
    cancelled: set[int] = set()

    async def one(index: int) -> None:
        rows = int(rng.integers(1, 4))
        x = np.full((rows, 3), index, dtype=np.float32)
        result = await identity_batched.scheduler.infer({"x": x}, ["y"])
        assert np.all(result["y"] == index) and result["y"].shape == (rows, 3)
        answered.append(index)

    tasks = [asyncio.create_task(one(i)) for i in range(200)]
    await asyncio.sleep(0)
    for index in rng.choice(200, size=40, replace=False):
        tasks[index].cancel()
        cancelled.add(int(index))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(answered) == sorted(set(answered))  # no duplicates
    for index, outcome in enumerate(outcomes):
        if index in cancelled:
            assert isinstance(outcome, asyncio.CancelledError)
        else:
            assert outcome is None
    assert set(answered) == set(range(200)) - cancelled
    assert identity_batched.scheduler.queued == 0


def gather_elements_model() -> onnx.ModelProto:
    """y[i] = x[i, idx[i]]: an index out of range fails at run time, not at validation."""
    nodes = [
        helper.make_node("Unsqueeze", ["idx", "axes"], ["idx2"]),
        helper.make_node("GatherElements", ["x", "idx2"], ["g"], axis=1),
        helper.make_node("Squeeze", ["g", "axes"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gather",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


async def test_one_bad_request_fails_alone_in_a_batch(tmp_path: Path) -> None:
    config = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 50_000}}
    model = load(tmp_path, "g", gather_elements_model(), config)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    good = [
        model.scheduler.infer({"x": x, "idx": np.array([i % 4], dtype=np.int64)}, ["y"])
        for i in range(4)
    ]
    bad = model.scheduler.infer({"x": x, "idx": np.array([99], dtype=np.int64)}, ["y"])
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    for i, result in enumerate(results[:4]):
        assert isinstance(result, dict), result
        assert float(result["y"][0]) == float(i % 4)
    assert isinstance(results[4], Exception)


def test_http_disconnect_removes_request_from_queue(tmp_path: Path) -> None:
    models.save(models.slow_model(0.5), tmp_path / "slow" / "1" / "model.onnx")
    (tmp_path / "slow" / "config.json").write_text(json.dumps({"dynamic_batching": {}}))
    running = start_server(Settings(repository=tmp_path))
    try:
        app = running.server.config.app
        model = app.state.dataplane.repository.get("slow")
        rows = int(1.5 * SLOW_ROWS_PER_SECOND)
        body = {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, 1024],
                    "datatype": "FP32",
                    "data": [0.001] * (rows * 1024),
                }
            ]
        }
        small = {
            "inputs": [
                {"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": [0.001] * 1024}
            ]
        }

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
                blocker = asyncio.create_task(client.post("/v2/models/slow/infer", json=body))
                while model.stats.pending == 0:
                    await asyncio.sleep(0.005)
                async with httpx.AsyncClient(base_url=running.url) as impatient:
                    waiter = asyncio.create_task(
                        impatient.post("/v2/models/slow/infer", json=small)
                    )
                    while model.scheduler.queued == 0:
                        await asyncio.sleep(0.005)
                    waiter.cancel()  # the client gives up and closes its connection
                    with pytest.raises(asyncio.CancelledError):
                        await waiter
                deadline = time.monotonic() + 5
                while model.scheduler.queued and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                assert model.scheduler.queued == 0
                assert not blocker.done()  # removed while the blocker still runs
                assert (await blocker).status_code == 200
                assert model.stats.rejected.get("cancelled") == 1
                assert model.stats.execution_count == 1

        asyncio.run(scenario())
    finally:
        running.stop()


def test_inflight_limit_rejects_with_retry_after(tmp_path: Path) -> None:
    models.save(models.slow_model(0.5), tmp_path / "slow" / "1" / "model.onnx")
    running = start_server(Settings(repository=tmp_path, max_inflight=1, inline_threshold_us=0))
    try:
        gate = Gate(running.server.config.app.state.dataplane.repository.get("slow"))
        rows = int(0.3 * SLOW_ROWS_PER_SECOND)
        body = {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, 1024],
                    "datatype": "FP32",
                    "data": [0.001] * (rows * 1024),
                }
            ]
        }

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
                first = asyncio.create_task(client.post("/v2/models/slow/infer", json=body))
                await gate.wait_entered()  # the first request is in flight until the gate opens
                second = await client.post("/v2/models/slow/infer", json=body)
                assert second.status_code == 503
                assert "limit of 1 requests in flight" in second.json()["error"]
                assert int(second.headers["retry-after"]) >= 1
                gate.open()
                assert (await first).status_code == 200

        asyncio.run(scenario())
    finally:
        running.stop()


def test_priority_and_timeout_parameters_are_checked(server_url: str) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}],
        "parameters": {"priority": -1},
    }
    response = httpx.post(f"{server_url}/v2/models/mlp/infer", json=body)
    assert response.status_code == 400
    assert "'priority'" in response.json()["error"]
    body["parameters"] = {"timeout": "soon"}
    assert httpx.post(f"{server_url}/v2/models/mlp/infer", json=body).status_code == 400


async def test_batches_do_not_mix_priority_levels(tmp_path: Path) -> None:
    config = {"max_batch_size": 512, "dynamic_batching": {"priority_levels": 2}}
    model = load(tmp_path, "slow", models.slow_model(0.5), config)
    gate = Gate(model)
    blocker = asyncio.create_task(model.scheduler.infer(slow_input(0.3), ["y"]))
    await gate.wait_entered()
    one_row = {"x": np.full((1, models.SLOW_MODEL_WIDTH), 1e-3, dtype=np.float32)}
    low = [asyncio.create_task(model.scheduler.infer(one_row, ["y"], priority=2)) for _ in range(3)]
    high = asyncio.create_task(model.scheduler.infer(one_row, ["y"], priority=1))
    await until(lambda: model.scheduler.queued == 4)
    gate.open()
    await asyncio.gather(blocker, *low, high)
    blocker_rows = slow_input(0.3)["x"].shape[0]
    assert sorted(model.stats.batches) == sorted({blocker_rows, 1, 3})


async def test_reserved_instance_serves_top_priority_at_once(tmp_path: Path) -> None:
    config = {
        "instance_count": 2,
        "dynamic_batching": {"priority_levels": 2, "reserved_instances": 1},
    }
    model = load(tmp_path, "slow", models.slow_model(0.5), config)
    order: list[str] = []

    async def one(tag: str, seconds: float, priority: int) -> None:
        await model.scheduler.infer(slow_input(seconds), ["y"], priority=priority)
        order.append(tag)

    gate = Gate(model)
    blocker = asyncio.create_task(one("low-running", 0.4, 2))
    await gate.wait_entered()
    waiting = asyncio.create_task(one("low-waiting", 0.01, 2))
    await until(lambda: model.stats.pending == 2)
    assert model.scheduler.queued == 1  # the second instance is kept for priority 1
    high = asyncio.create_task(one("high", 0.01, 1))
    await high
    gate.open()
    await asyncio.gather(blocker, waiting, high)
    assert order == ["high", "low-running", "low-waiting"]


def test_reserved_instances_need_priorities_and_a_shared_instance(tmp_path: Path) -> None:
    from maas_server.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="needs priority_levels"):
        parse_config({"instance_count": 2, "dynamic_batching": {"reserved_instances": 1}}, "t")
    with pytest.raises(ConfigError, match="at least one"):
        parse_config({"dynamic_batching": {"priority_levels": 2, "reserved_instances": 1}}, "t")


async def test_statistics_count_rows_of_batched_models_without_dynamic_batching(
    tmp_path: Path,
) -> None:
    model = load(tmp_path, "m", two_dim_identity(), {"max_batch_size": 8})
    await model.scheduler.infer({"x": np.zeros((5, 2), np.float32)}, ["y"])
    await model.scheduler.infer({"x": np.zeros((3, 2), np.float32)}, ["y"])
    assert model.stats.inference_count == 8
    assert model.stats.execution_count == 2
    assert sorted(model.stats.batches) == [3, 5]


class Gate:
    """Holds the first session call of a model until :meth:`open` (later ones run as usual), and
    records how many runs the scheduler had handed to the model at once (from the hand-over
    until the call returns)."""

    def __init__(self, model: ModelVersion) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.runs = 0
        onnx = model.onnx
        run, run_sync = onnx.run, onnx.run_sync

        async def counted_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
            with self._lock:
                self.runs += 1
                self.active += 1
                self.peak = max(self.peak, self.active)
            return await run(*args, **kwargs)

        def held_run_sync(*args: Any) -> dict[str, Any]:
            try:
                if not self.entered.is_set():
                    self.entered.set()
                    self._open.wait(30)
                return run_sync(*args)
            finally:
                with self._lock:
                    self.active -= 1

        onnx.run = counted_run  # type: ignore[method-assign]
        onnx.run_sync = held_run_sync  # type: ignore[method-assign]

    def open(self) -> None:
        self._open.set()

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30), "the first run never started"


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait, yielding to the event loop, until the scheduler's state satisfies ``condition``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def mlp_input() -> dict[str, np.ndarray[Any, Any]]:
    return {"input": np.full((1, 64), 0.5, dtype=np.float32)}


async def test_a_request_cut_by_its_deadline_keeps_the_instance_busy(tmp_path: Path) -> None:
    """The deadline cancels the waiting coroutine, not ONNX Runtime's call: the scheduler must
    not hand a second run to the model until that call returns (instance_count 1)."""
    model = load(tmp_path, "m", models.mlp_model(), {"instance_count": 1})
    gate = Gate(model)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(model.scheduler.infer(mlp_input(), ["output"]), 0.05)
    await gate.wait_entered()
    assert model.scheduler.busy == 1
    second = asyncio.create_task(model.scheduler.infer(mlp_input(), ["output"]))
    await until(lambda: model.scheduler.queued == 1 or gate.runs == 2)
    assert gate.runs == 1, "a second run was handed over while the first still ran"
    gate.open()
    result = await second
    assert result["output"].shape == (1, 10)
    assert gate.peak == 1
    assert model.scheduler.busy == 0 and model.stats.pending == 0


async def test_delayed_requests_count_in_max_queue_size(tmp_path: Path) -> None:
    policy = {
        "timeout_action": "DELAY",
        "default_timeout_microseconds": 60_000_000,
        "allow_timeout_override": True,
        "max_queue_size": 2,
    }
    config = {"dynamic_batching": {"default_queue_policy": policy}}
    model = load(tmp_path, "m", models.mlp_model(), config)
    gate = Gate(model)
    blocker = asyncio.create_task(model.scheduler.infer(mlp_input(), ["output"]))
    await gate.wait_entered()
    delayed = [
        asyncio.create_task(model.scheduler.infer(mlp_input(), ["output"], timeout_us=1_000))
        for _ in range(2)
    ]
    await until(lambda: model.scheduler.delayed == 2)
    with pytest.raises(QueueFullError, match=r"queue is full \(2 requests") as info:
        await model.scheduler.infer(mlp_input(), ["output"])
    assert int(info.value.headers["Retry-After"]) >= 1
    gate.open()
    for result in await asyncio.gather(blocker, *delayed):
        assert result["output"].shape == (1, 10)
    assert (await model.scheduler.infer(mlp_input(), ["output"]))["output"].shape == (1, 10)


async def test_queues_are_bounded_by_default(tmp_path: Path) -> None:
    """No ``max_queue_size`` in the configuration: the server's default bound applies."""
    models.save(models.mlp_model(), tmp_path / "m" / "1" / "model.onnx")
    repository = ModelRepository(tmp_path, max_queue_size=3)
    model = repository.get("m") if repository.load("m").state == "READY" else None
    assert model is not None
    gate = Gate(model)
    running = asyncio.create_task(model.scheduler.infer(mlp_input(), ["output"]))
    await gate.wait_entered()
    queued = [asyncio.create_task(model.scheduler.infer(mlp_input(), ["output"])) for _ in range(3)]
    await until(lambda: model.scheduler.queued == 3)
    with pytest.raises(QueueFullError, match=r"queue is full \(3 requests"):
        await model.scheduler.infer(mlp_input(), ["output"])
    gate.open()
    await asyncio.gather(running, *queued)
    assert Settings(repository=tmp_path).max_queue_size == 512


async def test_full_default_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    models.save(models.mlp_model(), tmp_path / "m" / "1" / "model.onnx")
    app = create_app(Settings(repository=tmp_path, max_queue_size=1, inline_threshold_us=0))
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        gate = Gate(app.state.dataplane.repository.get("m"))
        running = asyncio.create_task(c.post("/v2/models/m/infer", json=body))
        await gate.wait_entered()
        waiting = asyncio.create_task(c.post("/v2/models/m/infer", json=body))
        await until(lambda: app.state.dataplane.repository.get("m").scheduler.queued == 1)
        full = await c.post("/v2/models/m/infer", json=body)
        assert full.status_code == 503
        assert "queue is full" in full.json()["error"]
        assert int(full.headers["Retry-After"]) >= 1
        gate.open()
        assert (await running).status_code == 200
        assert (await waiting).status_code == 200
        assert (await c.post("/v2/models/m/infer", json=body)).status_code == 200
