"""The Redis store against a real redis-server: round trip, the atomic switch, rollback, keep-N,
a publish that stops before its switch."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from recsys_spark.config import ServeConfig
from recsys_spark.serving.store import (
    CachedList,
    ListReader,
    RecommendationStore,
    StoredList,
    StoreError,
    connect,
    encode_list,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

PREFIX = "t"
BIG = 2**53 + 1  # a float64 would round it to 2^53


def meta(run_date: str, users: int, model_version: str = "7") -> dict:
    return {"run_date": run_date, "model_name": "two_tower", "model_version": model_version, "policy": "epsilon",
            "policy_version": f"{model_version}:abc", "users": users, "rows": users * 2, "k": 2,
            "source_path": "/data/recommendations"}


def value(tag: int) -> bytes:
    """A user's two-item list whose every field names ``tag`` (a reader can tell versions apart)."""
    return encode_list([tag, tag + 1], [float(tag), float(tag) / 2], [0, 1], ["model", "explore"], [1.0, 0.25])


def publish(store: RecommendationStore, version: str, users: list[str], tag: int, keep: int = 3) -> list[str]:
    store.write_meta(version, meta(version[:10], len(users)))
    for start in range(0, len(users), 50):
        assert store.write_batch(version, [(u, value(tag)) for u in users[start:start + 50]]) == len(users[start:start + 50])
    return store.switch(version, keep)


@pytest.fixture
def store(redis_url) -> RecommendationStore:
    s = RecommendationStore(connect(ServeConfig(redis_url=redis_url), for_publish=True), PREFIX)
    yield s
    s.close()


@pytest.fixture
def reader(redis_url) -> RecommendationStore:
    """A client with the service's bounds (50 ms, no retry)."""
    s = RecommendationStore(connect(ServeConfig(redis_url=redis_url)), PREFIX)
    yield s
    s.close()


def test_round_trip_keeps_ints_ints_strings_strings_and_the_meta(store, reader):
    assert reader.current_version() is None and reader.get("u1") is None and reader.versions() == []
    store.write_meta("2019-10-12-7-aaa", meta("2019-10-12", 2))
    lists = {
        "u1": encode_list([BIG, 2**63 - 1, 5], [0.10000000149011612, -1.5, 0.0], [0, 1, 2],
                          ["model", "explore", "fallback"], [1.0, 0.05, 1.0]),
        "u2": encode_list(["SKU-0035789-XL", "0035789"], [2.0, 1.0], [0, 1], ["model", "model"], [1.0, 1.0]),
    }
    assert store.write_batch("2019-10-12-7-aaa", lists.items()) == 2
    assert store.switch("2019-10-12-7-aaa", keep=3) == []

    got = reader.get("u1")
    assert got == CachedList(version="2019-10-12-7-aaa", items=(BIG, 2**63 - 1, 5), scores=(0.10000000149011612, -1.5, 0.0),
                             slots=(0, 1, 2), sources=("model", "explore", "fallback"), propensities=(1.0, 0.05, 1.0),
                             policy="epsilon", policy_version="7:abc", model_version="7", run_date="2019-10-12")
    assert all(type(i) is int for i in got.items)
    assert reader.get("u2").items == ("SKU-0035789-XL", "0035789")  # zero-padded ids stay text
    assert reader.get("u1", k=2).items == (BIG, 2**63 - 1) and reader.get("u1", k=2).propensities == (1.0, 0.05)
    assert reader.get("nobody") is None
    assert reader.current_version() == "2019-10-12-7-aaa" and reader.versions() == ["2019-10-12-7-aaa"]
    m = reader.meta("2019-10-12-7-aaa")
    assert {k: m[k] for k in ("users", "rows", "k", "model_name", "source_path")} == {
        "users": 2, "rows": 4, "k": 2, "model_name": "two_tower", "source_path": "/data/recommendations"}
    assert m["published_at"]
    with pytest.raises(StoreError, match="version nope has no meta in Redis \\(key t:v:nope:meta\\)"):
        reader.meta("nope")


def test_a_reader_racing_switches_sees_whole_old_or_whole_new_lists(store, redis_url):
    users = [f"u{i}" for i in range(300)]
    publish(store, "2019-10-01-7-v1", users, tag=1)
    seen: dict[str, int] = {}
    odd: list[object] = []
    reading, stop = threading.Barrier(3), threading.Event()

    def hammer():
        r = RecommendationStore(connect(ServeConfig(redis_url=redis_url, socket_timeout_s=5.0)), PREFIX)
        n = 0
        try:
            while not stop.is_set() or n < 200:  # at least 200 reads each, however slow the machine
                got = r.get(users[n % len(users)])
                n += 1
                tag = got.items[0] if got else None
                expected = {1: "2019-10-01-7-v1", 2: "2019-10-02-7-v2", 3: "2019-10-03-7-v3"}.get(tag)
                if got is None or got.version != expected or got.items != (tag, tag + 1) \
                        or got.scores != (tag, tag / 2) or got.run_date != got.version[:10]:
                    odd.append(got)
                seen[got.version if got else None] = seen.get(got.version if got else None, 0) + 1
                if n == 1:
                    reading.wait(10)
        except Exception as exc:  # a reader that dies must fail the test, not end quietly
            odd.append(exc)
        finally:
            r.close()

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    reading.wait(10)  # both readers are reading before the first switch
    try:
        # Each publish rewrites every user while the readers read; the switches drop the oldest.
        publish(store, "2019-10-02-7-v2", users, tag=2, keep=2)
        publish(store, "2019-10-03-7-v3", users, tag=3, keep=2)
        publish(store, "2019-10-02-7-v2", users, tag=2, keep=2)  # an older date again: a full rewrite
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert odd == []
    assert set(seen) <= {"2019-10-01-7-v1", "2019-10-02-7-v2", "2019-10-03-7-v3"} and sum(seen.values()) >= 400


def test_rollback_serves_the_previous_version_then_refuses_past_the_oldest(store, reader):
    publish(store, "2019-10-01-7-v1", ["a"], tag=1)
    publish(store, "2019-10-02-7-v2", ["a"], tag=2)
    assert reader.get("a").items == (2, 3)

    assert store.rollback() == ("2019-10-02-7-v2", "2019-10-01-7-v1")
    assert reader.get("a").items == (1, 2) and reader.get("a").run_date == "2019-10-01"
    assert store.versions() == ["2019-10-01-7-v1"]
    with pytest.raises(StoreError) as err:
        store.rollback()
    assert str(err.value) == ("cannot roll back t:current: no version before 2019-10-01-7-v1 "
                              "(published versions: 2019-10-01-7-v1)")
    # The version rolled back from is deleted by the next switch; publishing it again restores it.
    assert publish(store, "2019-10-03-7-v3", ["a"], tag=3) == ["2019-10-02-7-v2"]
    assert store.client.keys("t:v:2019-10-02-7-v2:*") == []


def test_rollback_with_nothing_published_is_one_line(store):
    with pytest.raises(StoreError, match="^cannot roll back t:current: no version is current \\(published versions: none\\)$"):
        store.rollback()


def test_keep_n_deletes_the_keys_of_the_versions_that_fall_off(store, reader):
    for day in range(1, 6):
        dropped = publish(store, f"2019-10-0{day}-7-v{day}", ["a", "b"], tag=day, keep=3)
        assert dropped == ([f"2019-10-0{day - 3}-7-v{day - 3}"] if day > 3 else [])
    assert store.versions() == ["2019-10-05-7-v5", "2019-10-04-7-v4", "2019-10-03-7-v3"]
    left = sorted(k.decode() for k in store.client.keys("t:*"))
    assert left == sorted(["t:current", "t:versions"] + [f"t:v:2019-10-0{d}-7-v{d}:{s}" for d in (3, 4, 5)
                                                        for s in ("meta", "u:a", "u:b")])
    assert reader.get("b").items == (5, 6)


def test_a_publish_stopped_before_its_switch_leaves_readers_on_the_old_version(store, reader):
    publish(store, "2019-10-01-7-v1", ["a", "b", "c"], tag=1)
    # The new version's meta and part of its batches are written, then the publish dies.
    store.write_meta("2019-10-02-7-v2", meta("2019-10-02", 3))
    store.write_batch("2019-10-02-7-v2", [("a", value(2))])
    assert reader.current_version() == "2019-10-01-7-v1"
    assert [reader.get(u).items for u in "abc"] == [(1, 2)] * 3
    # The next publish that completes deletes what the stopped one left.
    assert publish(store, "2019-10-03-7-v3", ["a", "b", "c"], tag=3) == ["2019-10-02-7-v2"]
    assert store.client.keys("t:v:2019-10-02-7-v2:*") == []


def test_a_switch_to_a_version_without_meta_is_refused(store, reader):
    publish(store, "2019-10-01-7-v1", ["a"], tag=1)
    store.write_batch("2019-10-02-7-v2", [("a", value(2))])
    with pytest.raises(StoreError, match="cannot serve version 2019-10-02-7-v2: it has no meta in Redis"):
        store.switch("2019-10-02-7-v2", keep=3)
    assert reader.get("a").version == "2019-10-01-7-v1"


def test_republishing_a_version_gives_the_same_store(store):
    publish(store, "2019-10-01-7-v1", ["a", "b"], tag=1)
    publish(store, "2019-10-02-7-v2", ["a", "b"], tag=2)
    before = dump(store.client)
    publish(store, "2019-10-02-7-v2", ["a", "b"], tag=2)
    assert dump(store.client) == before


def test_the_service_client_fails_fast_when_redis_is_down(tmp_path):
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path) as server:
        r = RecommendationStore(connect(ServeConfig(redis_url=server.url)), PREFIX)
        assert r.get("a") is None
        server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            r.get("a")
        server.start()
        assert r.get("a") is None  # reconnects (and reloads its script) by itself
        r.close()


def dump(client: redis.Redis) -> dict[bytes, object]:
    """Every key with its value, whatever its type."""
    out: dict[bytes, object] = {}
    for key in client.keys("*"):
        kind = client.type(key)
        out[key] = {b"string": client.get, b"hash": client.hgetall, b"list": lambda k: client.lrange(k, 0, -1)}[kind](key)
    return out


def test_the_service_reader_survives_a_script_flush_and_reads_both_layouts(store, reader):
    """The service's reader (store.ListReader) sends EVALSHA: after SCRIPT FLUSH it loads the script
    again; a value of the earlier layout (an object of five arrays) is still read."""
    publish(store, "2019-10-01-7-v1", ["u1"], tag=10)
    assert reader.get("u1").items == (10, 11)
    store.client.script_flush()
    assert reader.get("u1").items == (10, 11) and reader.get("nobody") is None
    old = json.dumps({"items": [7, 8], "scores": [0.5, 0.25], "slots": [0, 1], "sources": ["model", "explore"],
                      "propensities": [0.9, 0.1]}).encode()
    store.client.set(store.user_key("2019-10-01-7-v1", "u2"), old)
    assert reader.get("u2").items == (7, 8) and reader.get("u2", k=1).propensities == (0.9,)
    version, raw = reader.get_value("u1")
    assert version == "2019-10-01-7-v1" and raw == value(10)
    whole, first = StoredList(raw), StoredList(raw, k=1)
    assert (len(whole), len(first)) == (2, 1) and whole.items_json() == raw
    assert json.loads(first.items_json()) == [{"item_id": 10, "slot": 0, "score": 10.0, "source": "model",
                                               "propensity": 1.0}]
    assert StoredList(old, k=1).items_json() == encode_list([7], [0.5], [0], ["model"], [0.9])
    with pytest.raises(StoreError, match="a stored list is not the JSON of items"):
        StoredList(b"nonsense")


def test_the_fast_reader_takes_plain_tcp_only_and_leaves_tls_acl_users_and_sockets_to_redis_py():
    # Clients are built without connecting: ListReader.of only reads their settings.
    def of(url: str):
        return ListReader.of(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5))

    plain = of("redis://127.0.0.1:6390/3")
    assert (plain.address, plain.db, plain.timeout_s) == (("127.0.0.1", 6390), 3, 0.5)
    assert of("redis://:secret@127.0.0.1:6390/0").password == "secret"
    assert of("rediss://127.0.0.1:6390/0") is None
    assert of("redis://alice:secret@127.0.0.1:6390/0") is None
    assert of("unix:///tmp/redis.sock") is None
