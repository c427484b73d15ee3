"""The hot paths' Lua scripts (wake-up ring, rate limit) over a connection of their own, against the real
Redis: they survive Redis forgetting its scripts, a dropped connection and a fork."""

import os

import pytest
import redis
from django.conf import settings

from config.redis_script import Script

pytestmark = pytest.mark.services

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def admin(flush_redis) -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def test_a_script_runs_with_its_keys_and_arguments(admin: redis.Redis) -> None:
    script = Script(settings.REDIS_URL, COUNT, timeout=2)

    assert script(["test:count"], [2]) == 2
    assert script.run(script.pack(["test:count"], [3])) == 5
    assert admin.get("test:count") == b"5"


def test_a_script_redis_forgot_is_loaded_again(admin: redis.Redis) -> None:
    script = Script(settings.REDIS_URL, COUNT, timeout=2)
    script(["test:count"], [1])
    admin.script_flush()  # as after a restart of Redis

    assert script(["test:count"], [1]) == 2


def test_a_dropped_connection_is_reopened(admin: redis.Redis) -> None:
    script = Script(settings.REDIS_URL, COUNT, timeout=2)
    script(["test:count"], [1])
    assert admin.client_kill_filter(_id=script.client.client_id()) == 1

    assert script(["test:count"], [1]) == 2


def test_a_forked_process_uses_a_connection_of_its_own(admin: redis.Redis) -> None:
    script = Script(settings.REDIS_URL, COUNT, timeout=2)
    script(["test:count"], [1])
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status
        ok = all(script(["test:child"], [1]) == n for n in range(1, 51))
        os._exit(0 if ok else 1)
    parent = [script(["test:count"], [1]) for _ in range(50)]
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert parent == list(range(2, 52))
    assert admin.get("test:child") == b"50"
