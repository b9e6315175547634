"""One suite, both adapters: what every bus must do (shared/bus/__init__.py)."""

import asyncio
import json

from shared.events import TokensExpiryDue, envelope_for, utcnow

from tests.support import eventually


def tick():
    return envelope_for(TokensExpiryDue(scheduled_for=utcnow()))


async def test_delivers_to_matching_queues_only(bus, unique):
    got_a, got_b = [], []

    async def on_a(env):
        got_a.append(env)

    async def on_b(env):
        got_b.append(env)

    await bus.subscribe(f"test.{unique}.a", ["scheduler.tokens_expiry_due"], on_a)
    await bus.subscribe(f"test.{unique}.b", ["backup.*"], on_b)
    sent = tick()
    await bus.publish(sent)
    await eventually(lambda: len(got_a) == 1)
    assert got_a[0].id == sent.id
    assert got_a[0].payload == sent.payload
    await asyncio.sleep(0.2)
    assert got_b == []


async def test_every_bound_queue_gets_its_own_copy(bus, unique):
    got = {"a": 0, "b": 0}

    def counter(name):
        async def on(env):
            got[name] += 1
        return on

    await bus.subscribe(f"test.{unique}.a", ["scheduler.#"], counter("a"))
    await bus.subscribe(f"test.{unique}.b", ["*.tokens_expiry_due"], counter("b"))
    for _ in range(5):
        await bus.publish(tick())
    await eventually(lambda: got == {"a": 5, "b": 5})


async def test_failing_handler_is_retried_then_succeeds(bus, unique):
    attempts = []

    async def flaky(env):
        attempts.append(env.id)
        if len(attempts) < 3:
            raise RuntimeError("database briefly away")

    await bus.subscribe(f"test.{unique}.a", ["scheduler.tokens_expiry_due"], flaky)
    sent = tick()
    await bus.publish(sent)
    await eventually(lambda: len(attempts) == 3)
    await asyncio.sleep(0.3)
    assert attempts == [sent.id] * 3
    assert await bus.dead_letters(f"test.{unique}.a") == []


async def test_handler_that_always_fails_ends_in_dead_letters_with_reason(bus, unique):
    attempts = []

    async def broken(env):
        attempts.append(env.id)
        raise ValueError("no such host 42")

    queue = f"test.{unique}.a"
    await bus.subscribe(queue, ["scheduler.tokens_expiry_due"], broken)
    sent = tick()
    await bus.publish(sent)
    await eventually(lambda: len(attempts) == 1 + len(bus.retry_delays))
    letters = await eventually_dead(bus, queue)
    assert len(letters) == 1
    assert json.loads(letters[0].body)["id"] == str(sent.id)
    assert letters[0].reason == "ValueError: no such host 42"
    assert letters[0].attempts == 1 + len(bus.retry_delays)
    await asyncio.sleep(0.3)
    assert len(attempts) == 1 + len(bus.retry_delays)


async def test_malformed_message_goes_straight_to_dead_letters(bus, unique):
    calls = []

    async def handler(env):
        calls.append(env)

    queue = f"test.{unique}.a"
    await bus.subscribe(queue, ["scheduler.tokens_expiry_due"], handler)
    await bus.publish_raw("scheduler.tokens_expiry_due", b"{not json")
    await bus.publish_raw("scheduler.tokens_expiry_due", json.dumps({"id": "x"}).encode())
    letters = await eventually_dead(bus, queue, count=2)
    assert calls == []
    assert all(letter.attempts == 1 for letter in letters)
    assert all(letter.reason.startswith("not an event envelope") for letter in letters)
    assert {letter.body for letter in letters} == {b"{not json", b'{"id": "x"}'}


async def test_handler_declaring_a_message_malformed_is_not_retried(bus, unique):
    from shared.events import MalformedMessage

    calls = []

    async def strict(env):
        calls.append(env)
        raise MalformedMessage("payload makes no sense")

    queue = f"test.{unique}.a"
    await bus.subscribe(queue, ["scheduler.#"], strict)
    await bus.publish(tick())
    letters = await eventually_dead(bus, queue)
    assert [letter.reason for letter in letters] == ["payload makes no sense"]
    assert len(calls) == 1


async def test_publish_many_confirms_each_message(bus, unique):
    from shared.bus.port import Outgoing

    got = []

    async def on(env):
        got.append(env.id)

    await bus.subscribe(f"test.{unique}.a", ["scheduler.tokens_expiry_due"], on)
    sent = [tick() for _ in range(20)]
    results = await bus.publish_many(
        [Outgoing(e.routing_key, e.to_bytes(), str(e.id)) for e in sent])
    assert results == [None] * 20
    assert await bus.publish_many([]) == []
    await eventually(lambda: len(got) == 20)
    assert sorted(got) == sorted(e.id for e in sent)
    await bus.close()
    failed = await bus.publish_many([Outgoing(e.routing_key, e.to_bytes()) for e in sent[:3]])
    assert len(failed) == 3 and all(isinstance(r, Exception) for r in failed)


async def test_ping(bus):
    assert await bus.ping() is True


async def eventually_dead(bus, queue, count=1):
    letters = []

    async def collect():
        letters.extend(await bus.dead_letters(queue))
        return len(letters) >= count

    await eventually(collect)
    return letters


async def test_transient_subscribers_each_get_every_event_while_they_live(bus, unique):
    first, second = [], []

    async def on_first(env):
        first.append(env.id)

    async def on_second(env):
        second.append(env.id)
        raise RuntimeError("a failing transient handler is only logged")

    await bus.subscribe_transient(["scheduler.*"], on_first)
    await bus.subscribe_transient(["scheduler.tokens_expiry_due"], on_second)
    sent = [tick() for _ in range(3)]
    for envelope in sent:
        await bus.publish(envelope)
    await eventually(lambda: len(first) == 3 and len(second) == 3)
    assert sorted(first) == sorted(e.id for e in sent) == sorted(second)
    await asyncio.sleep(0.2)
    assert len(second) == 3  # no retries
