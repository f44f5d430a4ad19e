"""Rerank documents go to the engine as each is rendered (``serving/score_pipeline``).

vLLM's own ``ServingScores._prepare_generators`` runs here on a fake engine client, so what is
checked is the patched class as the server uses it: when each document reaches the engine,
which ids and inputs it carries, the order of the outputs, and what a failing render does."""

from __future__ import annotations

import asyncio
import types

import pytest

from qwen3vl_vllm.serving import plugin, score_pipeline


class FakeIO:
    """An IO processor whose renders finish when the test says (``finish``/``fail``)."""

    def __init__(self, n):
        self.requests = [f"doc{i}" for i in range(n)]
        self.futures = {}

    def get_request_factory_online(self, ctx):
        return list(self.requests)

    def render_async(self, request):
        fut = asyncio.get_running_loop().create_future()
        self.futures[request] = fut
        return fut

    def finish(self, i):
        if self.futures[f"doc{i}"].cancelled():  # its request failed: the pool's result is dropped
            return
        self.futures[f"doc{i}"].set_result({"prompts": {"prompt_token_ids": [i] * (i + 1)},
                                             "params": "params", "lora_requests": None, "priorities": 0})

    def fail(self, i, exc):
        self.futures[f"doc{i}"].set_exception(exc)


class FakeEngine:
    """``encode`` as vLLM's engine client has it: an async generator per engine request that
    finishes when the test releases it; records what was submitted and what was aborted."""

    def __init__(self):
        self.submitted, self.aborted, self.release = [], [], {}

    async def encode(self, *, request_id, prompt, pooling_params, lora_request, priority, trace_headers):
        self.submitted.append((request_id, prompt["prompt_token_ids"]))
        gate = self.release.setdefault(request_id, asyncio.Event())
        try:
            await gate.wait()
            yield types.SimpleNamespace(request_id=request_id, error=None)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise


class Params:
    def __init__(self):
        self.verified = 0

    def verify(self, model_config):
        self.verified += 1


def _serving(engine):
    from vllm.entrypoints.pooling.scoring.serving import ServingScores

    score_pipeline.patch()  # idempotent: the plugin may have installed it already
    serving = object.__new__(ServingScores)  # no engine: only what the two methods read
    serving.engine_client, serving.model_config = engine, "model-config"
    serving.enable_flash_late_interaction = False
    serving._log_inputs = lambda *a, **k: None
    return serving


def _ctx(params):
    from vllm.entrypoints.pooling.typing import PoolingServeContext

    return PoolingServeContext(request="rerank", model_name="m", request_id="score-abc", pooling_params=params,
                               lora_request=None, priorities=0, prompt_extras=None)


def _run(coro):
    """Run a test's coroutine; a pipeline that waits where it should not fails in 20 s, not hangs."""
    asyncio.run(asyncio.wait_for(coro, 20))


async def _tick(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


def test_each_document_reaches_the_engine_when_its_render_finishes():
    async def go():
        engine, io, params = FakeEngine(), FakeIO(3), Params()
        serving, ctx = _serving(engine), _ctx(params)
        await serving._preprocessing(io, ctx)
        assert ctx.engine_inputs == [None, None, None] and engine.submitted == []  # renders running
        await serving._prepare_generators(ctx)
        collected = asyncio.ensure_future(serving._collect_batch(ctx))
        io.finish(1)
        await _tick()
        # document 1 is in the engine while documents 0 and 2 are still rendering
        assert engine.submitted == [("score-abc-1", [1, 1])]
        io.finish(0)
        await _tick()
        assert [r for r, _ in engine.submitted] == ["score-abc-1", "score-abc-0"]
        engine.release["score-abc-0"].set()  # the first to finish in the engine
        io.finish(2)
        await _tick()
        for rid in ("score-abc-1", "score-abc-2"):
            engine.release[rid].set()
        await collected
        # outputs in document order whatever order they finished in; every input kept
        assert [o.request_id for o in ctx.final_res_batch] == ["score-abc-0", "score-abc-1", "score-abc-2"]
        assert [e["prompts"]["prompt_token_ids"] for e in ctx.engine_inputs] == [[0], [1, 1], [2, 2, 2]]
        assert params.verified == 3 and engine.aborted == []
        assert not hasattr(ctx, score_pipeline._PENDING)

    _run(go())


def test_a_failing_render_fails_the_request_and_aborts_what_was_sent():
    async def go():
        engine, io = FakeEngine(), FakeIO(3)
        serving, ctx = _serving(engine), _ctx(Params())
        await serving._preprocessing(io, ctx)
        await serving._prepare_generators(ctx)
        collected = asyncio.ensure_future(serving._collect_batch(ctx))
        io.finish(0)
        await _tick()
        assert [r for r, _ in engine.submitted] == ["score-abc-0"]
        io.fail(1, ValueError("documents[1]: cannot decode image"))
        with pytest.raises(ValueError, match=r"documents\[1\]: cannot decode image"):
            await collected
        await _tick()
        assert engine.aborted == ["score-abc-0"]  # the one already in the engine
        io.finish(2)  # a render still running when the request failed: nothing is sent for it
        await _tick()
        assert io.futures["doc2"].cancelled()
        assert [r for r, _ in engine.submitted] == ["score-abc-0"]

    _run(go())


def test_late_interaction_a_busy_server_and_the_switch_keep_vllms_order(monkeypatch):
    async def go(serving):
        io = FakeIO(2)
        ctx = _ctx(Params())
        pre = asyncio.ensure_future(serving._preprocessing(io, ctx))
        await _tick()
        assert not pre.done()  # vLLM's gather: waits for every render
        io.finish(0)
        io.finish(1)
        await pre
        assert [e["prompts"]["prompt_token_ids"] for e in ctx.engine_inputs] == [[0], [1, 1]]
        assert not hasattr(ctx, score_pipeline._PENDING)

    late = _serving(FakeEngine())
    late.enable_flash_late_interaction = True
    _run(go(late))
    monkeypatch.setattr(score_pipeline, "_IN_FLIGHT", [2])  # another scoring request in flight
    _run(go(_serving(FakeEngine())))
    monkeypatch.setattr(score_pipeline, "_IN_FLIGHT", [0])
    monkeypatch.setattr(score_pipeline, "_ON", [False])  # QWEN3VL_SCORE_PIPELINE=0 at start-up
    _run(go(_serving(FakeEngine())))


def test_a_request_that_finds_another_in_flight_is_rendered_whole_first():
    """Through the route's entry (``__call__``): the first request alone sends its documents as
    rendered; a second one arriving meanwhile renders all first (vLLM's order); the count of
    requests in flight returns to 0 after a response and after an error."""

    async def go():
        engine = FakeEngine()
        serving = _serving(engine)
        ios = {"first": FakeIO(2), "second": FakeIO(2), "bad": FakeIO(1)}

        async def init_ctx(io_processor, request, raw_request=None):
            return _ctx(Params())

        async def respond(io_processor, ctx):
            return [o.request_id for o in ctx.final_res_batch]

        serving.get_io_processor = lambda request: ios[request]
        serving._init_ctx, serving._postprocessing_async = init_ctx, respond
        first = asyncio.ensure_future(serving("first"))
        await _tick()
        assert score_pipeline._IN_FLIGHT[0] == 1
        ios["first"].finish(0)
        await _tick()
        assert [r for r, _ in engine.submitted] == ["score-abc-0"]  # alone: sent as rendered
        second = asyncio.ensure_future(serving("second"))
        await _tick()
        assert score_pipeline._IN_FLIGHT[0] == 2 and score_pipeline.busy()
        ios["second"].finish(0)
        await _tick()
        assert len(engine.submitted) == 1  # busy: the second waits for all its renders
        ios["second"].finish(1)
        ios["first"].finish(1)
        await _tick()
        assert len(engine.submitted) == 4
        for gate in engine.release.values():
            gate.set()
        assert await first == ["score-abc-0", "score-abc-1"] and await second == ["score-abc-0", "score-abc-1"]
        assert score_pipeline._IN_FLIGHT[0] == 0
        bad = asyncio.ensure_future(serving("bad"))
        await _tick()
        ios["bad"].fail(0, ValueError("documents[0]: empty"))
        with pytest.raises(ValueError, match="empty"):
            await bad
        assert score_pipeline._IN_FLIGHT[0] == 0

    _run(go())


def test_the_switch_is_refused_by_name_and_never_gates_start_up():
    assert score_pipeline.enabled({}) is True
    assert score_pipeline.enabled({score_pipeline.ENV: "0"}) is False
    for bad in ("yes", "2", "off"):
        with pytest.raises(ValueError, match=rf"{score_pipeline.ENV}='{bad}': use 1 .* or 0"):
            score_pipeline.enabled({score_pipeline.ENV: bad})
    assert plugin.PIECES["rerank documents sent as rendered"][0] == ()  # speed only: nothing refuses
    from qwen3vl_vllm.serving import contract

    entries = [s for s in contract.SYMBOLS if "score_pipeline" in s.why]
    assert {s.name for s in entries} == {"ServingScores.__call__", "ServingScores._preprocessing",
                                         "ServingScores._prepare_generators", "merge_async_iterators"}
    assert all(s.optional for s in entries)


def test_a_bad_switch_stops_a_detected_checkpoint_before_its_engine(tmp_path, monkeypatch):
    """vLLM's own ``create_model_config`` on a tiny reranker: a bad value is refused by name at
    start-up (on GPU servers too, where the CPU switches are not read), not ignored."""
    from vllm.engine.arg_utils import EngineArgs

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    ckpt = ensure_checkpoint(tmp_path, kind="reranker", size="tiny")
    plugin.register()
    monkeypatch.setattr("qwen3vl_vllm.serving.engine_hooks.on_cpu", lambda: False)
    monkeypatch.setenv(score_pipeline.ENV, "fast")
    with pytest.raises(ValueError, match=rf"{score_pipeline.ENV}='fast': use 1 .* or 0"):
        EngineArgs(model=str(ckpt), dtype="float32").create_model_config()
    monkeypatch.setenv(score_pipeline.ENV, "0")
    assert EngineArgs(model=str(ckpt), dtype="float32").create_model_config().runner_type == "pooling"
