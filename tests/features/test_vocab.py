"""Vocabularies: the parallel ranking, minimum counts, null/OOV indices, versions, and reuse on
new data (an id unseen at training time maps to OOV, never to another id's index)."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.features import vocab
from recsys_spark.features.featurize import load_vocabs
from recsys_spark.features.row_numbers import row_numbers
from recsys_spark.features.sequences import STEP_TIME, encode_items
from tests.features.test_featurize import CUTOFFS, VIEW, clean_events

pytestmark = pytest.mark.unit


def test_row_numbers_follow_the_global_order_across_partitions(spark):
    rows = [(k, n) for k, n in zip("hgfedcbaij", [3, 1, 3, 2, 9, 1, 3, 2, 0, 9])]
    df = spark.createDataFrame(rows, "key string, n int").repartition(3)
    got = row_numbers(df, [F.desc("n"), F.asc("key")], "rank", start=2)
    expected = {key: i + 2 for i, (key, _) in enumerate(sorted(rows, key=lambda r: (-r[1], r[0])))}
    assert {r["key"]: r["rank"] for r in got.collect()} == expected
    assert got.columns == ["key", "n", "rank"] and got.count() == 10
    assert row_numbers(df.where("n > 100"), ["key"], "rank").count() == 0


def test_price_buckets_with_adaptive_execution_off(spark, tmp_path):
    # The numbered prices joined back onto a frame of their own lineage failed Spark's analysis
    # ("Failure when resolving conflicting references") under spark.sql.adaptive.enabled=false,
    # on events read from Parquet as featurize reads them.
    prices = [(1, 10.0), (2, 20.0), (3, 20.0), (4, None), (5, 40.0)]
    clean_events(spark, [("u", "2024-01-01 10:00:00", VIEW, p, None, None, price) for p, price in prices]
                 ).write.parquet(str(tmp_path / "clean"))
    events = schema.conform(spark.read.parquet(str(tmp_path / "clean")), schema.CLEAN_SCHEMA)
    # As item snapshots build them: counts and side features of the events before a cutoff, joined.
    past = events.where(F.col(schema.EVENT_TIME) < F.lit("2024-02-01").cast("timestamp"))
    counts = past.groupBy(schema.PRODUCT_ID).agg(F.count(F.lit(1)).alias("events"))
    items = counts.join(vocab.item_side_features(past), schema.PRODUCT_ID)
    adaptive = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        got = {r[schema.PRODUCT_ID]: r[schema.PRICE_BUCKET] for r in vocab.add_price_buckets(items, 2).collect()}
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", adaptive)
    # Four priced items; k (priced items at or below the price) 1, 3, 3, 4; bucket ceil(2k / 4); no price: 0.
    assert got == {1: 1, 2: 2, 3: 2, 4: 0, 5: 2}


def test_value_vocab_min_count_ties_and_lookup_of_null_rare_and_unseen(spark):
    # Brand training events: b 3, a 2, c 2, d 1 (and one null).
    events = clean_events(spark, [
        ("u", "2024-01-01 10:00:00", VIEW, 1, None, brand, None)
        for brand in ["b", "b", "b", "a", "c", "a", "c", "d", None]
    ])
    brands = vocab.build_value_vocab(events, vocab.BRAND, min_count=2)
    assert sorted(tuple(r) for r in brands.collect()) == [(2, "b", 3), (3, "a", 2), (4, "c", 2)]
    probe = spark.createDataFrame([("b",), ("c",), ("d",), ("zzz",), (None,)], "brand string")
    got = {r[schema.BRAND]: r[schema.BRAND_IDX] for r in vocab.lookup(F.col(schema.BRAND), brands, vocab.BRAND, probe, schema.BRAND_IDX).collect()}
    # d is rarer than min_count and zzz was never seen: both OOV; null is "no brand".
    assert got == {"b": 2, "c": 4, "d": schema.VOCAB_OOV_INDEX, "zzz": schema.VOCAB_OOV_INDEX, None: schema.VOCAB_NULL_INDEX}


def test_version_is_a_content_digest_independent_of_partitioning(spark):
    rows = [(2, "b", 3), (3, "a", 2), (4, "c", 2)]
    one = spark.createDataFrame(rows, schema.BRAND_VOCAB_SCHEMA)
    spread = one.repartition(3)
    swapped = spark.createDataFrame([(3, "b", 3), (2, "a", 2), (4, "c", 2)], schema.BRAND_VOCAB_SCHEMA)
    v1, v2, v3 = (vocab.version(df, vocab.BRAND) for df in (one, spread, swapped))
    assert v1 == v2 and v1["size"] == 3 and v1["num_indices"] == 5
    assert v3["version"] != v1["version"]
    empty = vocab.version(one.where("false"), vocab.BRAND)
    assert (empty["size"], empty["num_indices"]) == (0, schema.VOCAB_OOV_INDEX + 1)


def _steps(spark, rows):
    events = clean_events(spark, [("u", when, VIEW, product, None, None, None) for when, product in rows])
    return events, events.select(schema.USER_ID, schema.PRODUCT_ID, F.col(schema.EVENT_TIME).alias(STEP_TIME))


def _save(spark, root, vocabs):
    for spec in vocab.SPECS:
        io.write_table(schema.conform(vocabs[spec.kind], spec.schema), io.feature_path(root, spec.table))
    versions = {spec.kind: vocab.version(vocabs[spec.kind], spec) for spec in vocab.SPECS}
    io.write_json(spark, io.feature_path(root, schema.FEATURE_METADATA), {"vocab": versions})


def test_reused_vocabulary_maps_unseen_ids_to_oov_not_to_a_wrong_index(spark, tmp_path):
    day_a, day_b = "2024-01-02 10:00:00", "2024-01-02 11:00:00"
    # Training data: 10 three times, 20 twice -> 10: 2, 20: 3.
    events, steps = _steps(spark, [(day_a, 10)] * 3 + [(day_a, 20)] * 2)
    empty = {spec.kind: spark.createDataFrame([], spec.schema) for spec in (vocab.CATEGORY, vocab.BRAND)}
    item = vocab.build_item_vocab(steps, events, CUTOFFS, 1, 2, empty["category"], empty["brand"])
    vocabs = {"item": item, **empty, "user": vocab.build_value_vocab(events, vocab.USER, 1)}
    root = str(tmp_path / "trained")
    _save(spark, root, vocabs)

    # New data: 30 (never trained on) is now the most popular, 20 outranks 10.
    new_events, new_steps = _steps(spark, [(day_b, 30)] * 5 + [(day_b, 20)] * 4 + [(day_b, 10)])
    rebuilt = vocab.build_item_vocab(new_steps, new_events, CUTOFFS, 1, 2, empty["category"], empty["brand"])
    rebuilt_idx = {r[schema.PRODUCT_ID]: r[schema.ITEM_IDX] for r in rebuilt.collect()}
    assert rebuilt_idx == {30: 2, 20: 3, 10: 4}  # rebuilding moves every id: 30 takes 10's index

    reused = load_vocabs(spark, root, new_steps, CUTOFFS)
    encoded = encode_items(new_steps.select(schema.PRODUCT_ID).distinct(), reused["item"])
    assert {r[schema.PRODUCT_ID]: r[schema.ITEM_IDX] for r in encoded.collect()} == {10: 2, 20: 3, 30: schema.OOV_INDEX}
    # Indices as trained, counts (the logQ popularity) from the new training period.
    assert sorted((r[schema.PRODUCT_ID], r[schema.ITEM_IDX], r[schema.TRAIN_COUNT]) for r in reused["item"].collect()) == [
        (10, 2, 1), (20, 3, 4)]
    assert vocab.version(reused["item"], vocab.ITEM) == vocab.version(item, vocab.ITEM)


def test_reuse_refuses_a_vocabulary_that_does_not_match_its_version(spark, tmp_path):
    events, steps = _steps(spark, [("2024-01-02 10:00:00", 10), ("2024-01-02 10:00:00", 20)])
    empty = {spec.kind: spark.createDataFrame([], spec.schema) for spec in (vocab.CATEGORY, vocab.BRAND)}
    item = vocab.build_item_vocab(steps, events, CUTOFFS, 1, 2, empty["category"], empty["brand"])
    vocabs = {"item": item, **empty, "user": vocab.build_value_vocab(events, vocab.USER, 1)}
    root = str(tmp_path / "trained")
    _save(spark, root, vocabs)
    tampered = item.withColumn(schema.ITEM_IDX, F.lit(5) - F.col(schema.ITEM_IDX))  # 10 <-> 20
    io.write_table(tampered, io.feature_path(root, "item_vocab"))
    with pytest.raises(DataQualityError, match=r"item_vocab has vocabulary version \w{16}, its metadata.json records"):
        load_vocabs(spark, root, steps, CUTOFFS)
    io.write_json(spark, io.feature_path(root, schema.FEATURE_METADATA), {"num_items": 4})
    with pytest.raises(InputError, match="records no vocabulary versions"):
        load_vocabs(spark, root, steps, CUTOFFS)
    with pytest.raises(InputError, match="does not exist \\(config key featurize.vocab_from\\)"):
        load_vocabs(spark, str(tmp_path / "nowhere"), steps, CUTOFFS)


def test_an_extended_vocabulary_keeps_every_known_index_and_appends_the_new_values(spark, tmp_path):
    from recsys_spark.config import FeaturizeConfig
    from recsys_spark.features.featurize import extend_vocabs

    day_a, day_b = "2024-01-02 10:00:00", "2024-01-02 11:00:00"
    # Trained on: product 10 (category 100) three times, 20 (category 100) twice.
    events = clean_events(spark, [("u1", day_a, VIEW, 10, 100, "x", 5.0)] * 3 + [("u1", day_a, VIEW, 20, 100, "x", 9.0)] * 2)
    steps = events.select(schema.USER_ID, schema.PRODUCT_ID, F.col(schema.EVENT_TIME).alias(STEP_TIME))
    fc = FeaturizeConfig(min_item_count=1, min_category_count=1, min_brand_count=1, min_user_count=1, price_buckets=2)
    from recsys_spark.features.featurize import build_vocabs
    root = str(tmp_path / "trained")
    _save(spark, root, build_vocabs(steps, events, CUTOFFS, fc))

    # New data: 30 (new, category 200 also new) 4 times, 20 three times, 40 (new, category 100)
    # twice, 10 once; a new user u2.
    new_events = clean_events(spark, [("u2", day_b, VIEW, 30, 200, "y", 1.0)] * 4 + [("u1", day_b, VIEW, 20, 100, "x", 9.0)] * 3
                              + [("u2", day_b, VIEW, 40, 100, "x", 2.0)] * 2 + [("u1", day_b, VIEW, 10, 100, "x", 5.0)])
    new_steps = new_events.select(schema.USER_ID, schema.PRODUCT_ID, F.col(schema.EVENT_TIME).alias(STEP_TIME))
    grown = extend_vocabs(load_vocabs(spark, root, new_steps, CUTOFFS), new_steps, new_events, CUTOFFS, fc)

    # Known values keep their index; new ones follow, in order of their count in the new data.
    assert {r[schema.CATEGORY_ID]: r[schema.CATEGORY_IDX] for r in grown["category"].collect()} == {100: 2, 200: 3}
    assert {r[schema.BRAND]: r[schema.BRAND_IDX] for r in grown["brand"].collect()} == {"x": 2, "y": 3}
    assert {r[schema.USER_ID]: r[schema.USER_IDX] for r in grown["user"].collect()} == {"u1": 2, "u2": 3}
    items = {r[schema.PRODUCT_ID]: (r[schema.ITEM_IDX], r[schema.CATEGORY_IDX], r[schema.TRAIN_COUNT])
             for r in grown["item"].collect()}
    # 30's category is the grown vocabulary's 200 (3); counts are the new data's.
    assert items == {10: (2, 2, 1), 20: (3, 2, 3), 30: (4, 3, 4), 40: (5, 2, 2)}
    assert vocab.version(grown["item"], vocab.ITEM)["num_indices"] == 6
