"""The service's id rules equal clean's and score's Spark expressions, value for value."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from recsys_spark import product_ids, schema
from recsys_spark.etl import pseudonym as spark_pseudonym
from recsys_spark.etl.validate import id_value
from recsys_spark.serving import ids

KEY = b"test-key-not-secret"


@pytest.mark.unit
def test_xxh64_matches_the_reference_vectors():
    # From the xxHash reference implementation (seed 0).
    assert ids.xxh64(b"") == 0xEF46DB3751D8E999
    assert ids.xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert ids.xxh64(b"abc") == 0x44BC2CF5AD770999
    assert ids.xxh64(b"Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1


@pytest.mark.unit
def test_bad_ids_and_event_types_are_refused_in_one_line():
    with pytest.raises(ids.IdError, match=r"user_id: '12a' is not a whole number \(clean.id_types.user_id=integer"):
        ids.pseudonym("12a", KEY)
    with pytest.raises(ids.IdError, match="user_id is empty"):
        ids.pseudonym("  ", KEY, schema.ID_STRING)
    with pytest.raises(ids.IdError, match="not a whole number"):
        ids.product_key(str(2**63), schema.ID_INTEGER)  # beyond the long range
    with pytest.raises(ids.IdError, match="event_type: 'clik' is not one of view, cart"):
        ids.event_type("clik", {})
    assert ids.event_type(" AddToCart ", {"addtocart": "cart"}) == "cart"
    assert ids.pseudonym("+0042", KEY) == ids.pseudonym(42, KEY) == ids.pseudonym(" 42 ", KEY)
    assert ids.pseudonym("0042", KEY, schema.ID_STRING) != ids.pseudonym("42", KEY, schema.ID_STRING)


@pytest.mark.e2e
def test_the_twins_equal_the_spark_expressions(spark):
    users = ["42", " +0042 ", "-7", "9223372036854775807", "s617", "  visitor-ü ", "0035789"]
    products = ["35789", "SKU-0035789-XL", " 0035789 ", "B07XJ8C8F5"]
    frame = spark.createDataFrame([(u,) for u in users], "text string")
    for id_type in (schema.ID_INTEGER, schema.ID_STRING):
        typed = frame.select("text", id_value(F.trim("text"), id_type).alias("id"))
        hashed = spark_pseudonym.with_key(typed, KEY).select(
            "text", spark_pseudonym.hmac_sha256_hex(F.col("id")).alias("pseudonym"))
        expected = {r["text"]: r["pseudonym"] for r in hashed.collect() if r["pseudonym"] is not None}
        got = {}
        for text in users:
            try:
                got[text] = ids.pseudonym(text, KEY, id_type)
            except ids.IdError:
                pass
        assert got == expected and len(expected) == (5 if id_type == schema.ID_INTEGER else len(users))

    keyed = spark.createDataFrame([(p,) for p in products], "text string").select(
        "text", *[product_ids.keys(F.col("text"), t).alias(t) for t in (schema.ID_INTEGER, schema.ID_STRING)]).collect()
    assert {r["text"]: r[schema.ID_STRING] for r in keyed} == {p: ids.product_key(p, schema.ID_STRING) for p in products}
    assert {r["text"]: r[schema.ID_INTEGER] for r in keyed if r[schema.ID_INTEGER] is not None} == {
        "35789": 35789, " 0035789 ": 35789}

    # scoring_rows' user key: xxhash64(user_id, score.seed, run_date), seeds of both literal types.
    for seed in (13, 2**40):
        rows = spark.createDataFrame([(u,) for u in users], "user_id string").select(
            "user_id", F.xxhash64(F.col("user_id"), F.lit(seed), F.lit("2019-11-01")).alias("key")).collect()
        assert {r["user_id"]: r["key"] for r in rows} == {u: ids.user_key(u, seed, "2019-11-01") for u in users}
