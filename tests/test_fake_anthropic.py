"""The fake Anthropic server speaks the Messages API well enough for the official SDK, in JSON and SSE."""

import asyncio
import threading
import time

import anthropic
import pytest

from tests.fake_anthropic import FakeAnthropic, Reply


@pytest.fixture
def fake():
    with FakeAnthropic() as server:
        yield server


def client(fake, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="test-key", base_url=fake.url, **kwargs)


ASK = {"model": "claude-sonnet-5-5", "max_tokens": 200, "messages": [{"role": "user", "content": "Hi [1]"}]}


def test_a_json_reply_reaches_the_sdk_with_usage(fake):
    fake.then(Reply(text="Trains are the default [1].", cache_read_input_tokens=40))
    message = client(fake).messages.create(**ASK, system=[{"type": "text", "text": "Be brief."}])
    assert message.content[0].text == "Trains are the default [1]."
    assert message.usage.output_tokens == 5 and message.usage.cache_read_input_tokens == 40
    recorded = fake.requests[0]
    assert recorded.model == "claude-sonnet-5-5"
    assert "test-key" in (recorded.headers.get("x-api-key", "") + recorded.headers.get("authorization", ""))
    assert recorded.body["system"][0]["text"] == "Be brief."


def test_a_streamed_reply_arrives_as_text_deltas(fake):
    fake.then(Reply(text="one two three"))
    with client(fake).messages.stream(**ASK) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["one ", "two ", "three"]
    assert final.stop_reason == "end_turn"
    assert fake.requests[0].stream


def test_an_error_event_mid_stream_is_an_overloaded_status_error(fake):
    fake.then(Reply(text="one two three four", error_after_chunks=2))
    received = []
    with pytest.raises(anthropic.APIStatusError) as info, client(fake).messages.stream(**ASK) as stream:
        for text in stream.text_stream:
            received.append(text)
    assert received == ["one ", "two "]
    assert "overloaded_error" in str(info.value)


def test_529_and_429_with_retry_after_are_retried_by_the_sdk(fake):
    fake.then(Reply(status=529), Reply(status=429, headers={"retry-after": "0"}), Reply(text="finally"))
    message = client(fake, max_retries=2).messages.create(**ASK)
    assert message.content[0].text == "finally"
    assert len(fake.requests) == 3


def test_400_is_not_retried(fake):
    fake.then(Reply(status=400), Reply(text="never"))
    with pytest.raises(anthropic.BadRequestError):
        client(fake, max_retries=2).messages.create(**ASK)
    assert len(fake.requests) == 1


def test_a_hang_is_cut_by_the_client_timeout(fake):
    fake.then(Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        client(fake, max_retries=0, timeout=0.5).messages.create(**ASK)
    assert time.monotonic() - started < 3


def test_delays_and_the_async_client(fake):
    fake.default = lambda body: Reply(text="async works", delay_s=0.2)

    async def ask() -> str:
        aclient = anthropic.AsyncAnthropic(api_key="k", base_url=fake.url)
        try:
            async with aclient.messages.stream(**ASK) as stream:
                return "".join([text async for text in stream.text_stream])
        finally:
            await aclient.close()

    # In a thread of its own: Playwright's sync API may have left an event loop on this one.
    result: list[str] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: result.append(asyncio.run(ask())))
    worker.start()
    worker.join(timeout=30)
    assert result == ["async works"]
    assert time.monotonic() - started >= 0.2
