"""String product ids: the 63-bit key, the way back to the original id, the collision check, and
score's exclusions read under either id type, on a few inline rows."""

from __future__ import annotations


import numpy as np
import pytest
from pyspark.sql import functions as F

from recsys_spark import product_ids, schema
from recsys_spark.errors import DataQualityError
from recsys_spark.scoring import score

pytestmark = pytest.mark.unit

IDS = ["SKU-0035789-XL", "0035789", "35789", "A-1234-XL"]


def key_of(spark, texts: list[str]) -> list[int]:
    frame = spark.createDataFrame([(t,) for t in texts], "t string")
    return [r[0] for r in frame.select(product_ids.product_key(F.col("t"))).collect()]


def test_keys_are_non_negative_distinct_and_a_function_of_the_trimmed_text(spark):
    keys = key_of(spark, IDS)
    assert len(set(keys)) == 4 and min(keys) >= 0 and max(keys) <= 2**63 - 1
    frame = spark.createDataFrame([(" SKU-0035789-XL ",), ("0035789",), ("",), (None,)], "t string")
    assert [r[0] for r in frame.select(product_ids.keys(F.col("t"), schema.ID_STRING)).collect()] == [
        keys[0], keys[1], None, None]
    # Integer ids are their own key, exactly, above 2^53 too.
    big = spark.createDataFrame([(2**62 + 1,), (7,)], "t long")
    assert [r[0] for r in big.select(product_ids.keys(F.col("t"), schema.ID_INTEGER)).collect()] == [2**62 + 1, 7]


def test_originals_put_the_ids_back_in_place_and_leave_integer_ids_alone(spark):
    keys = key_of(spark, IDS)
    table = spark.createDataFrame(list(zip(keys, IDS)), "product_id long, original_id string")
    recs = spark.createDataFrame([("u1", 1, keys[1]), ("u1", 2, keys[0]), ("u2", 1, 12345)],
                                 "user_id string, rank int, item_id long")
    out = product_ids.originals(recs, schema.ITEM_ID, table)
    assert out.columns == recs.columns
    assert sorted(tuple(r) for r in out.collect()) == [("u1", 1, "0035789"), ("u1", 2, "SKU-0035789-XL"),
                                                      ("u2", 1, None)]  # a key without its id: null
    assert product_ids.originals(recs, schema.ITEM_ID, None) is recs


def test_two_ids_with_one_key_fail_in_one_line_naming_both(spark):
    same = spark.createDataFrame([(1, "A"), (1, "A"), (2, "B")], "product_id long, original_id string")
    product_ids.check_collisions(same)  # one id seen twice is no collision
    pairs = spark.createDataFrame([(5, "SKU-2"), (5, "SKU-X"), (6, "C")], "product_id long, original_id string")
    with pytest.raises(DataQualityError, match=r"^clean: product ids 'SKU-2' and 'SKU-X' have the same 63-bit key 5 "):
        product_ids.check_collisions(pairs)


def test_with_product_ids_types_only_the_shop_facing_id(spark):
    strings = schema.with_product_ids(schema.RECOMMENDATION_SCHEMA, schema.ID_STRING)
    assert strings[schema.ITEM_ID].dataType.simpleString() == "string"
    assert [f for f in strings.fields if f.name != schema.ITEM_ID] == [
        f for f in schema.RECOMMENDATION_SCHEMA.fields if f.name != schema.ITEM_ID]
    assert schema.with_product_ids(schema.FEEDBACK_COUNTS_SCHEMA, schema.ID_INTEGER) is schema.FEEDBACK_COUNTS_SCHEMA


def test_exclusions_are_read_as_keys_under_string_ids(spark, tmp_path):
    path = tmp_path / "out_of_stock.csv"
    path.write_text("product_id\nSKU-0035789-XL\n 0035789 \nSKU-0035789-XL\n")
    keys = key_of(spark, IDS[:2])
    assert score.read_exclusions(spark, str(path), schema.ID_STRING).tolist() == sorted(keys)
    # Under integer ids the same file is refused: its ids are not whole numbers.
    with pytest.raises(DataQualityError, match="not integer ids, e.g. 'SKU-0035789-XL'"):
        score.read_exclusions(spark, str(path))
    assert score.read_exclusions(spark, str(path), schema.ID_STRING).dtype == np.int64
