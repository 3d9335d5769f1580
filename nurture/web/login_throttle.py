"""Login rate limit in Redis: failed attempts per address and per account, in a fixed window.

After ``LIMIT`` failures from one IP address or for one email within ``WINDOW``
seconds, further attempts are refused until the window ends (a correct password
included: guessing must not be able to tell). A successful login clears the
account's counter.
"""

from __future__ import annotations

from redis import Redis

LIMIT = 10
WINDOW = 15 * 60
PREFIX = "nurture:login-failures"


def _keys(ip: str, email: str) -> list[str]:
    return [f"{PREFIX}:ip:{ip}", f"{PREFIX}:email:{email.strip().lower()}"]


def seconds_blocked(redis: Redis, ip: str, email: str) -> int:
    """0 when a login attempt may go ahead, else how long until it may."""
    pipe = redis.pipeline()
    for key in _keys(ip, email):
        pipe.get(key)
        pipe.ttl(key)
    values = pipe.execute()
    waits = [max(int(ttl), 1) for count, ttl in zip(values[::2], values[1::2]) if count and int(count) >= LIMIT]
    return max(waits, default=0)


def record_failure(redis: Redis, ip: str, email: str) -> None:
    pipe = redis.pipeline()
    for key in _keys(ip, email):
        pipe.incr(key)
        pipe.expire(key, WINDOW, nx=True)
    pipe.execute()


def clear(redis: Redis, email: str) -> None:
    redis.delete(_keys("", email)[1])
