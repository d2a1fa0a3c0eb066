"""String ids end to end (issue 31): UUID visitors and SKU / zero-padded product ids through
``recsys run``, every row kept, and the recommendations naming the products as the log did."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_spark import schema
from recsys_spark.cli import stage_function
from recsys_spark.config import load_config

from tests.conftest import tiny_overrides_at

pytestmark = pytest.mark.e2e

STRING_IDS = ["generate.string_ids=true", "generate.defects=false",
              "clean.id_types.user_id=string", "clean.id_types.product_id=string"]
# One process, one short pass, the model served as it is: this tests the ids' path, not quality.
FAST = ["train.launcher=local", "train.epochs=1", "train.max_steps=20", "evaluate.baselines=[popularity]",
        "generate.n_users=150", "generate.days=8", "featurize.validation_days=1", "featurize.test_days=1",
        "score.ranker=model"]


def raw_ids(root) -> pd.DataFrame:
    """Every (user_id, product_id) of the generated CSV files, as text, exactly as written."""
    files = sorted((root / "raw").glob("*.csv"))
    return pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False, usecols=[schema.USER_ID, schema.PRODUCT_ID])
                      for f in files], ignore_index=True)


def test_uuid_users_and_sku_products_round_trip(spark, tmp_path):
    summary = stage_function("run")(spark, load_config(None, [*tiny_overrides_at(tmp_path), *FAST, *STRING_IDS]))
    root = tmp_path / "work"
    raw = raw_ids(root)
    # The log is what the issue describes: no id is a whole number, some products keep leading zeros.
    assert raw[schema.USER_ID].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}").all()
    assert raw[schema.PRODUCT_ID].str.startswith("SKU-0").any()
    padded = raw[schema.PRODUCT_ID].str.fullmatch(r"00[0-9]{8}")
    assert padded.any() and (padded | raw[schema.PRODUCT_ID].str.fullmatch(r"SKU-0[0-9]{8}-(XS|S|M|L|XL)")).all()

    # No row rejected.
    report = json.loads((root / "reports" / "clean_report.json").read_text())
    assert report["rows_read"] == len(raw) and sum(report["rejected"].values()) == 0 and report["rows_kept"] > 0

    # The recommendations carry the original product ids: strings, each one of the log's, exactly.
    table = pq.read_table(root / "recommendations")
    assert str(table.schema.field(schema.ITEM_ID).type) == "string"
    recs = table.to_pandas()
    assert len(recs) > 0 and summary["users_scored"] >= 1
    assert set(recs[schema.ITEM_ID]) <= set(raw[schema.PRODUCT_ID])
    assert recs[schema.ITEM_ID].str.startswith("00").any() or recs[schema.ITEM_ID].str.startswith("SKU-0").all()

    # Inside, each product is one 63-bit key; paths.product_ids maps it back, one id per key.
    ids = pq.read_table(root / "product_ids").to_pandas()
    assert set(ids[schema.ORIGINAL_ID]) == set(raw[schema.PRODUCT_ID])
    pairs = ids[[schema.PRODUCT_ID, schema.ORIGINAL_ID]].drop_duplicates()
    assert pairs[schema.PRODUCT_ID].is_unique and pairs[schema.ORIGINAL_ID].is_unique
    assert (pairs[schema.PRODUCT_ID] >= 0).all()
    clean = pq.read_table(root / "clean").to_pandas()
    assert set(clean[schema.PRODUCT_ID]) <= set(pairs[schema.PRODUCT_ID])

    # The shop sends the ids back as it got them. Out of stock: a CSV of original ids, never
    # recommended again; feedback on what was shown: every row names a served exposure.
    run_date = recs[schema.RUN_DATE].astype(str).iloc[0]
    first = recs[recs[schema.RANK] == 1]
    stock = tmp_path / "out_of_stock.csv"
    stock.write_text("product_id\n" + "\n".join(sorted(set(first[schema.ITEM_ID]))) + "\n")
    base = [*tiny_overrides_at(tmp_path), *FAST, *STRING_IDS]
    stage_function("score")(spark, load_config(None, [*base, f"score.exclude_items_path={stock}",
                                                      "score.run_date=2030-01-01"]))
    again = pq.read_table(root / "recommendations" / "run_date=2030-01-01").to_pandas()
    assert len(again) > 0 and not set(again[schema.ITEM_ID]) & set(first[schema.ITEM_ID])

    shown = recs[recs[schema.RUN_DATE].astype(str) == run_date]
    logged = shown[[*schema.EXPOSURE_KEY, schema.PROPENSITY, schema.POLICY, schema.POLICY_VERSION]].assign(
        **{schema.SHOWN_AT: pd.Timestamp("2030-01-01"), schema.CLICKED: shown[schema.RANK] == 1,
           schema.PURCHASED: None})
    logged[schema.RUN_DATE] = pd.to_datetime(logged[schema.RUN_DATE]).dt.date
    (root / "feedback").mkdir()
    logged.to_parquet(root / "feedback" / "part-0.parquet", index=False)
    fed_back = stage_function("clean")(spark, load_config(None, base))["feedback"]
    assert fed_back["rows_read"] == fed_back["rows_kept"] == len(shown)
    kept = pq.read_table(root / "clean_feedback").to_pandas()
    assert sorted(kept[schema.ITEM_ID]) == sorted(shown[schema.ITEM_ID])
