"""Units of the REST service that need no server: micro-batcher, auth rules, CLI refusals."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cxrkit.deploy.serve.auth import is_loopback, resolve_api_key
from cxrkit.deploy.serve.batching import MicroBatcher, QueueFull
from cxrkit.deploy.serve.errors import ServeError


def _run(coro):
    return asyncio.run(coro)


class Recorder:
    """A batch function that records the batches it saw (runs in the executor thread)."""

    def __init__(self, delay_s: float = 0.0, fail_on=None):
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.delay_s, self.fail_on = delay_s, fail_on

    def __call__(self, items):
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("model failed")
        return [ValueError(f"bad {x}") if x == "bad" else x * 10 for x in items]


def test_concurrent_submissions_are_batched_in_order():
    rec = Recorder()

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="model") as pool:
            b = MicroBatcher(rec, executor=pool, max_batch=4, max_wait_ms=50)
            b.start()
            results = await asyncio.gather(*(b.submit(i) for i in range(10)))
            await b.stop()
            return results

    assert _run(main()) == [i * 10 for i in range(10)]
    assert [len(x) for x in rec.batches] == [4, 4, 2]
    assert [x for batch in rec.batches for x in batch] == list(range(10))
    assert all(t.startswith("model") for t in rec.threads)  # never on the event loop thread


def test_batch_waits_at_most_max_wait():
    rec = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(rec, executor=pool, max_batch=64, max_wait_ms=30)
            b.start()
            t = time.perf_counter()
            assert await b.submit(1) == 10
            waited = time.perf_counter() - t
            await b.stop()
            return waited

    waited = _run(main())
    assert 0.025 <= waited < 1.0
    assert rec.batches == [[1]]


def test_max_batch_one_means_no_batching():
    rec = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(rec, executor=pool, max_batch=1, max_wait_ms=50)
            b.start()
            await asyncio.gather(*(b.submit(i) for i in range(5)))
            await b.stop()

    _run(main())
    assert [len(x) for x in rec.batches] == [1] * 5


def test_newcomers_fill_the_next_batch_while_one_runs():
    rec = Recorder(delay_s=0.1)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(rec, executor=pool, max_batch=8, max_wait_ms=0)
            b.start()
            first = asyncio.ensure_future(b.submit(0))
            await asyncio.sleep(0.02)  # batch [0] is now running
            rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 6)]
            await asyncio.gather(first, *rest)
            await b.stop()

    _run(main())
    assert rec.batches == [[0], [1, 2, 3, 4, 5]]


def test_item_and_batch_failures_reach_only_their_requests():
    rec = Recorder(fail_on="boom")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(rec, executor=pool, max_batch=2, max_wait_ms=20)
            b.start()
            out = await asyncio.gather(b.submit("bad"), b.submit(1), return_exceptions=True)
            boom = await asyncio.gather(b.submit("boom"), return_exceptions=True)
            after = await b.submit(2)  # the worker survived
            await b.stop()
            return out, boom, after

    out, boom, after = _run(main())
    assert isinstance(out[0], ValueError) and out[1] == 10
    assert isinstance(boom[0], RuntimeError) and after == 20


def test_cancelled_requests_are_skipped_and_queue_is_bounded():
    rec = Recorder(delay_s=0.1)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(rec, executor=pool, max_batch=1, max_wait_ms=0, max_queue=2)
            b.start()
            running = asyncio.ensure_future(b.submit("a"))
            await asyncio.sleep(0.02)
            waiting = asyncio.ensure_future(asyncio.wait_for(b.submit("timed-out"), 0.03))
            other = asyncio.ensure_future(b.submit("c"))
            await asyncio.sleep(0.005)
            assert b.depth == 2
            with pytest.raises(QueueFull):
                await b.submit("d")
            with pytest.raises(asyncio.TimeoutError):
                await waiting
            assert await running == "a" * 10 and await other == "c" * 10
            await b.stop()

    _run(main())
    assert ["timed-out"] not in rec.batches


def test_bad_batcher_settings():
    with pytest.raises(ServeError):
        MicroBatcher(lambda x: x, executor=None, max_batch=0)


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
                                           ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                           ("10.0.0.1", False), ("example.org", False), ("", False)])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_resolve_api_key(monkeypatch):
    monkeypatch.delenv("CXR_API_KEY", raising=False)
    assert resolve_api_key("k" * 20, no_auth=False, host="0.0.0.0") == "k" * 20
    with pytest.raises(ServeError, match="no API key"):
        resolve_api_key(None, no_auth=False, host="127.0.0.1")
    with pytest.raises(ServeError, match="loopback"):
        resolve_api_key(None, no_auth=True, host="0.0.0.0")
    with pytest.raises(ServeError, match="too short"):
        resolve_api_key("short", no_auth=False, host="127.0.0.1")
    assert resolve_api_key(None, no_auth=True, host="127.0.0.1") is None
    monkeypatch.setenv("CXR_API_KEY", "e" * 24)
    assert resolve_api_key(None, no_auth=False, host="0.0.0.0") == "e" * 24
    with pytest.raises(ServeError, match="both"):
        resolve_api_key(None, no_auth=True, host="127.0.0.1")


def test_cli_refuses_to_start_without_key(monkeypatch, tmp_path, capsys):
    from cxrkit.cli import main

    monkeypatch.delenv("CXR_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path), "--host", "0.0.0.0", "--no-auth"])
    assert exc.value.code == 2 and "loopback" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path)])
    assert exc.value.code == 2 and "API key" in capsys.readouterr().err


def test_model_id_follows_content_not_location(tmp_path):
    import shutil
    from types import SimpleNamespace

    from cxrkit.deploy.serve.engine import model_id

    a = tmp_path / "a"
    (a / "members" / "0").mkdir(parents=True)
    (a / "config.json").write_text('{"thresholds": {"x": 0.5}}')
    (a / "members" / "0" / "model.safetensors").write_bytes(b"weights-0")
    shutil.copytree(a, tmp_path / "b")
    ida = model_id(SimpleNamespace(path=a, config={}))
    assert ida.startswith("sha256:") and ida == model_id(SimpleNamespace(path=tmp_path / "b", config={}))
    (tmp_path / "b" / "members" / "0" / "model.safetensors").write_bytes(b"weights-1")  # a member's weights
    assert model_id(SimpleNamespace(path=tmp_path / "b", config={})) != ida
    in_memory = model_id(SimpleNamespace(path=None, config={"a": 1}))
    assert in_memory != model_id(SimpleNamespace(path=None, config={"a": 2}))
