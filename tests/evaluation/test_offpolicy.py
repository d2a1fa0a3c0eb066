"""Off-policy evaluation of the next policy: target propensities by hand and against the score
stage's own, estimates that cover a simulated policy's true value, withholding, the report section.

No Spark but in the last test: user vectors are given (VectorEncoder), lists are pandas."""

from __future__ import annotations

import base64
import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from recsys_spark import schema
from recsys_spark.config import EvaluateConfig, GenerateConfig
from recsys_spark.data import feedback_sim
from recsys_spark.data.generate import build_world
from recsys_spark.errors import ConfigError
from recsys_spark.evaluation import ope, report
from recsys_spark.evaluation import offpolicy
from recsys_spark.schema import EXCLUDE_PRODUCTS, USER_CATEGORY, USER_KEY, USER_VECTOR
from recsys_spark.scoring import policies
from recsys_spark.scoring.recommender import ItemSpace, ListRules, Recommender, ScoringPlan, VectorEncoder
from tests.evaluation.test_report import sample_report

pytestmark = pytest.mark.unit

RUN_DATE = dt.date(2019, 10, 3)
# Every user's vector is [1]: an item's score is its value. Products 100..103: greedy list g1, g2.
SCORES = [5.0, 4.0, 1.0, 0.0]
G1, G2, A, B = 100, 101, 102, 103


def vector_plan(k: int, share: float, samples: int = 50, scores=SCORES, products=None, pool=(2, 3),
                policy: policies.Policy | None = None) -> ScoringPlan:
    n = len(scores)
    products = np.arange(n, dtype=np.int64) + 100 if products is None else np.asarray(products, dtype=np.int64)
    items = ItemSpace(products, np.full(n, -1, dtype=np.int64), vectors=np.asarray(scores, dtype=np.float32)[:, None])
    fallback = ItemSpace(np.zeros(0, np.int64), np.zeros(0, np.int64), popularity=np.zeros(0, np.float32))
    return ScoringPlan(VectorEncoder(), items, fallback, np.asarray(pool, dtype=np.int64), np.zeros(0, np.int64),
                       ListRules(k, 16, 0, share, samples), policy or policies.Policy())


def users(ids, seed: int = 0) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({
        schema.USER_ID: list(ids),
        USER_VECTOR: [[1.0]] * n,
        EXCLUDE_PRODUCTS: [np.zeros(0, dtype=np.int64)] * n,
        USER_CATEGORY: pd.array([None] * n, dtype="Int64"),
        USER_KEY: np.random.default_rng(seed).integers(-(2**62), 2**62, n),
    })


def logged_rows(rows) -> pd.DataFrame:
    """(user, slot, item, propensity, clicked) tuples as LOGGED_COLUMNS rows of RUN_DATE."""
    frame = pd.DataFrame(rows, columns=[schema.USER_ID, schema.SLOT, schema.ITEM_ID, schema.PROPENSITY,
                                        schema.CLICKED])
    frame[schema.RUN_DATE] = RUN_DATE
    frame[schema.POLICY], frame[schema.POLICY_VERSION] = "epsilon", "3:abcd1234"
    return frame[offpolicy.LOGGED_COLUMNS]


def with_reward(logged: pd.DataFrame, plan: ScoringPlan, frame: pd.DataFrame) -> pd.DataFrame:
    reward = offpolicy.PositionCtr.fit(logged[schema.SLOT], logged[schema.ITEM_ID], logged[schema.CLICKED])
    placed = offpolicy.target_placements(plan, frame, logged, reward)
    placed[offpolicy.Q_LOGGED] = reward.predict(placed[schema.SLOT].to_numpy(), placed[schema.ITEM_ID].to_numpy())
    return placed


# Three lists, two slots. The deterministic target serves [g1, g2] to everyone, so its
# probabilities are u0 [1, 0], u1 [0, 1], u2 [1, 1] and the weights 1 / propensity there:
# u0 [2, 0], u1 [0, 2], u2 [2, 1]. Clicks: u0 slot 0, u1 both slots.
HAND_LOG = [
    ("u0", 0, G1, 0.5, True), ("u0", 1, A, 0.25, False),
    ("u1", 0, B, 0.25, True), ("u1", 1, G2, 0.5, True),
    ("u2", 0, G1, 0.5, False), ("u2", 1, G2, 1.0, False),
]


def hand_estimates(min_ess: float = 0.0) -> dict:
    logged = logged_rows(HAND_LOG)
    placed = with_reward(logged, vector_plan(k=2, share=0.0), users(["u0", "u1", "u2"]))
    assert placed[offpolicy.TARGET_PROPENSITY].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    return offpolicy.estimate(placed, ope.Options(min_effective_sample_size=min_ess, samples=200, seed=1))


def test_a_deterministic_target_on_a_hand_log_by_hand():
    found = hand_estimates()
    assert (found["lists"], found["exposures"], found["clicks"]) == (3, 6, 3)
    # Weighted clicks: u0 2 * 1, u1 2 * 1 (slot 1; slot 0 has weight 0): 4 over 3 lists.
    assert found["estimates"]["ips"]["value"] == pytest.approx(4 / 3)
    # SNIPS: 4 / (sum of weights 7) per exposure, times 6 exposures / 3 lists.
    assert found["estimates"]["snips"]["value"] == pytest.approx(4 / 7 * 2)
    assert found["estimates"]["ips"]["ess"] == pytest.approx(7**2 / (4 + 4 + 4 + 1))
    # The logged policy's own clicks per list: 3 clicks over 3 lists, never withheld.
    assert found["logged"]["value"] == pytest.approx(1.0) and found["logged"]["ess"] == pytest.approx(6.0)
    for name in ("ips", "snips", "dm", "dr"):
        value = found["estimates"][name]
        assert value["low"] <= value["value"] <= value["high"], name


def test_too_small_an_effective_sample_size_withholds_with_the_reason():
    found = hand_estimates(min_ess=4.0)
    for name in ("ips", "snips", "dr"):
        value = found["estimates"][name]
        assert value["value"] is None and value["low"] is None
        assert value["reason"] == "effective sample size 3.8 below 4", name
    assert found["logged"]["value"] == pytest.approx(1.0)
    metrics = offpolicy.mlflow_metrics({"available": True, **found})
    assert "ope.ips.clicks_per_list" not in metrics and metrics["ope.ips.ess"] == pytest.approx(49 / 13)
    assert metrics["ope.logged.clicks_per_list"] == pytest.approx(1.0)


@pytest.mark.parametrize("policy", ["epsilon", "boost", "thompson"])
def test_monte_carlo_target_propensities_are_the_score_stages_own(policy):
    chosen = policies.Policy(policy)
    if policy == "boost":
        chosen.bonus = policies.boost_bonus(4, np.array([2, 3]), 3.5)  # A jumps above g2
    if policy == "thompson":  # counted throughout: no closed form
        chosen.draws = np.array([[2, 3, 2, 3], [3, 2, 3, 2]])
    plan = vector_plan(k=2, share=0.5, samples=40, policy=chosen)
    frame = users([f"u{i}" for i in range(30)], seed=3)
    served = Recommender(plan).recommend(frame)
    assert (served[schema.PROPENSITY] < 1).any()
    placed = offpolicy.target_placements(plan, frame, served[[schema.USER_ID, schema.SLOT, schema.ITEM_ID]])
    np.testing.assert_array_equal(placed[offpolicy.TARGET_PROPENSITY].to_numpy(), served[schema.PROPENSITY].to_numpy())
    # An item the target never puts in slot 1 (g1 is always in slot 0 or 1 ... B never at slot 2):
    # slots at or past K have probability 0.
    beyond = pd.DataFrame({schema.USER_ID: ["u0"], schema.SLOT: [2], schema.ITEM_ID: [B]})
    assert offpolicy.target_placements(plan, frame, beyond)[offpolicy.TARGET_PROPENSITY].tolist() == [0.0]


@pytest.mark.timeout(60)
def test_the_targets_exploration_probabilities_are_exact():
    # K = 2, share 1/2, pool {A, B} (both valid; 4 tries): a pick lands at slot 0 with
    # 1/2 * 1/2 = 1/4, at slot 1 with 1/2 (1/4 + 1/4 (1 - 2 (1/2)^4)) = 15/64 (P(D >= 2) = 7/8),
    # and is never a model item (g1, g2 lead): exactly these, whatever the 40 lists drew. The
    # model items are exact too (no pool item among the 2 best): g1 at slot 0 when slot 0 is
    # not explored, 1/2; g2 at slot 1 when neither is, 1/4; g1 at slot 1 when slot 0 holds a
    # pick and slot 1 does not, 1/4 (slot 1 plain) + 1/4 * 1/8 (explored, but D = 1) = 9/32.
    plan = vector_plan(k=2, share=0.5, samples=40)
    frame = users([f"u{i}" for i in range(7)], seed=4)
    logged = pd.DataFrame({schema.USER_ID: [f"u{i}" for i in range(7)], schema.SLOT: [0, 1, 0, 1, 0, 1, 1],
                           schema.ITEM_ID: [A, B, B, A, G1, G2, G1]})
    found = offpolicy.target_placements(plan, frame, logged)[offpolicy.TARGET_PROPENSITY].tolist()
    assert found[:4] == [1 / 4, 15 / 64, 1 / 4, 15 / 64]
    assert found[4:] == pytest.approx([1 / 2, 1 / 4, 9 / 32], rel=1e-12)


def test_the_estimates_cover_a_simulated_target_policys_true_value():
    # 4 items, 2 slots; the logging policy shows each user a uniformly random ordered pair of
    # distinct items (every item lands in a slot with probability 1/4); the target is the fixed
    # list of the two items with the largest vector values.
    gen = GenerateConfig(n_users=3000, n_items=4, n_categories=2, n_brands=2, days=3, n_bots=0, taste_drift=0.0,
                         start_date="2019-10-01")
    world = build_world(gen)
    model = feedback_sim.ClickModel(position_bias=1.0, scale=4.0, popularity_weight=0.0, max_ctr=0.6)
    key = b"ope-test-key"
    ids = feedback_sim.pseudonyms(world.user_id, key)
    rng = np.random.default_rng(7)
    shown = np.argsort(rng.random((len(ids), 4)), axis=1)[:, :2]
    recs = pd.DataFrame({
        schema.USER_ID: np.repeat(ids, 2), schema.ITEM_ID: world.product_id[shown.ravel()],
        schema.RUN_DATE: RUN_DATE, schema.SLOT: np.tile([0, 1], len(ids)), schema.PROPENSITY: 0.25,
        schema.POLICY: "uniform", schema.POLICY_VERSION: "u:1",
    })
    logged = feedback_sim.simulate_feedback(world, gen, recs, model, key, seed=11)[offpolicy.LOGGED_COLUMNS]

    plan = vector_plan(k=2, share=0.0, scores=[1.0, 4.0, 2.0, 3.0], products=world.product_id)
    frame = users(list(ids))
    placed = with_reward(logged, plan, frame)
    target = Recommender(plan).recommend(frame).assign(**{schema.RUN_DATE: RUN_DATE, schema.POLICY: "target",
                                                          schema.POLICY_VERSION: "t:1"})
    assert target[schema.ITEM_ID].tolist()[:2] == [world.product_id[1], world.product_id[3]]
    truth = feedback_sim.policy_value(world, gen, target, model, key)
    logged_truth = feedback_sim.policy_value(world, gen, recs, model, key)
    found = offpolicy.estimate(placed, ope.Options(min_effective_sample_size=100, samples=500, seed=2))
    assert abs(truth - logged_truth) > 0.02  # the two policies differ: covering one is not covering both
    for name in ("ips", "snips", "dr"):
        value = found["estimates"][name]
        assert value["ess"] > 1000 and value["low"] <= truth <= value["high"], (name, value, truth)
    assert found["logged"]["low"] <= logged_truth <= found["logged"]["high"]


def test_popularity_deciles_and_exposure_shares_by_hand():
    products = np.arange(20, dtype=np.int64) + 1
    deciles = offpolicy.popularity_deciles(products, counts=np.arange(20)[::-1])  # product 1 is the most popular
    assert deciles[:2].tolist() == [10, 10] and deciles[-2:].tolist() == [1, 1]
    found = offpolicy.exposure_shares(np.array([1, 2, 20, 999]), products, deciles)
    assert found["shares"][9] == pytest.approx(2 / 3) and found["shares"][0] == pytest.approx(1 / 3)
    assert (found["exposures"], found["unknown"]) == (4, 1)


def test_the_reward_model_is_slot_rate_times_a_shrunk_item_lift():
    model = offpolicy.PositionCtr.fit([0, 0, 1, 1], [7, 8, 7, 8], [1, 0, 1, 0], prior_clicks=1.0)
    assert model.slot_ctr.tolist() == [0.5, 0.5]
    # Item 7: 2 clicks, expected 1: lift (2 + 1) / (1 + 1); item 8: (0 + 1) / (1 + 1).
    assert model.predict([0, 1, 0, 0], [7, 8, 99, -1]).tolist() == [0.75, 0.25, 0.5, 0.0]


def test_config_keys_are_checked_by_name():
    with pytest.raises(ConfigError, match="evaluate.ope_min_ess"):
        EvaluateConfig(ope_min_ess=-1.0)
    with pytest.raises(ConfigError, match="evaluate.ope_days"):
        EvaluateConfig(ope_days=-2)


def off_policy_section() -> dict:
    found = hand_estimates(min_ess=4.0)
    products = np.array([G1, G2, A, B])
    deciles = offpolicy.popularity_deciles(products, np.array([40, 30, 20, 10]))
    return {
        "available": True, "run_dates": ["2019-10-03"], "lists_without_history": 1, "min_ess": 4.0,
        "target": {"model_version": "4", "policy": "epsilon", "explore_share": 0.1, "propensity_samples": 200,
                   "top_k": 2, "seed": 0},
        "logged_policies": ["epsilon:3:abcd1234"], "history": offpolicy.HISTORY_NOTE,
        "reward_model": offpolicy.REWARD_NOTE.format(s=5.0),
        "exposure_deciles": {"logged": offpolicy.exposure_shares(np.array([G1, A, B, G2, G1, G2]), products, deciles),
                             "target": offpolicy.exposure_shares(np.array([G1, G2] * 3), products, deciles)},
        **found,
    }


def test_the_exploration_section_shows_the_estimates_and_the_exposure_figure():
    html = report.render_html({**sample_report(), "off_policy": off_policy_section()})
    assert "<h2>Exploration</h2>" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    section = html[html.index("<h2>Exploration</h2>"):html.index("<h2>Popularity bias</h2>")]
    assert "1.0000 [" in section  # the logged policy's clicks per list with its interval
    # Every estimator of the target is withheld (DM too: its ESS is that of the same weights).
    assert section.count("<td>withheld</td>") == 4 and section.count("effective sample size 3.8 below 4") == 4
    assert "1 lists of users without any event" in section
    figure = report.figures({**sample_report(), "off_policy": off_policy_section()})["exposure"]
    assert len(figure.axes[0].patches) == 2 * offpolicy.DECILES


def test_the_exploration_section_says_when_there_is_no_feedback():
    html = report.render_html({**sample_report(), "off_policy": offpolicy.no_feedback("/data/clean_feedback")})
    section = html[html.index("<h2>Exploration</h2>"):html.index("<h2>Popularity bias</h2>")]
    assert "no clean feedback at /data/clean_feedback" in section and "<table" not in section
    assert len(re.findall(r'src="data:image/png', html)) == 3
    assert "exposure" not in report.figures({**sample_report(), "off_policy": offpolicy.no_feedback("x")})
    assert offpolicy.mlflow_metrics(offpolicy.no_feedback("x")) == {}


def test_evaluate_target_rebuilds_histories_before_the_run_date_in_spark(spark, tmp_path):
    from recsys_spark import io
    from recsys_spark.config import from_dict
    from tests.evaluation.test_rankers import tiny_bundle

    bundle = tiny_bundle()
    cfg = from_dict({"paths": {"root": str(tmp_path)}, "featurize": {"max_seq_len": 4},
                     "score": {"top_k": 2, "explore_share": 0.5, "propensity_samples": 20},
                     "evaluate": {"ope_min_ess": 0.0, "bootstrap_samples": 50}})
    vocab = bundle.item_vocab
    io.write_table(spark.createDataFrame(
        [tuple(int(v) for v in row) for row in vocab[schema.ITEM_VOCAB_SCHEMA.fieldNames()].to_numpy()],
        schema.ITEM_VOCAB_SCHEMA), io.feature_path(cfg.paths.resolve("features"), "item_vocab"))
    utc = dt.timezone.utc

    def event(user, product, day, hour):
        at = dt.datetime(2019, 10, day, hour, tzinfo=utc)
        return (at, "view", product, 7, None, None, 1.0, user, f"s{user}{day}", at.date())

    # ua has events before 2019-10-03 and one after (left out); ub's first event is after it.
    events = [event("ua", 1002, 1, 9), event("ua", 1003, 2, 9), event("ua", 1004, 3, 9), event("ub", 1005, 3, 9)]
    clean = spark.createDataFrame(events, schema.CLEAN_SCHEMA)
    clean.write.partitionBy(schema.EVENT_DATE).parquet(cfg.paths.resolve("clean"))
    rows = offpolicy.scoring_rows_as_of(io.read_clean(spark, cfg.paths.resolve("clean")),
                                 spark.createDataFrame(vocab[[schema.ITEM_IDX, schema.PRODUCT_ID]]),
                                 spark.createDataFrame(pd.DataFrame({schema.USER_ID: ["ua", "ub"]})), "2019-10-03",
                                 seed=0, exclude_event_types=["purchase"], max_seq_len=4).toPandas()
    assert rows[schema.USER_ID].tolist() == ["ua"]
    assert list(rows[schema.HIST_ITEMS][0]) == [0, 0, 2, 3]  # items 1002, 1003: not the 3rd's 1004

    logged = logged_rows([("ua", 0, 1004, 0.5, True), ("ua", 1, 1005, 0.5, False), ("ub", 0, 1002, 1.0, False)])
    logged[schema.RUN_DATE] = RUN_DATE
    feedback = spark.createDataFrame(logged.assign(**{schema.SHOWN_AT: None, schema.PURCHASED: None})[
        schema.CLEAN_FEEDBACK_SCHEMA.fieldNames()], schema.CLEAN_FEEDBACK_SCHEMA)
    section = offpolicy.evaluate_target(spark, cfg, bundle, feedback, vocab, "1")
    assert section["available"] and section["lists_without_history"] == 1
    assert (section["lists"], section["exposures"], section["clicks"]) == (1, 2, 1)
    assert set(section["estimates"]) == {"ips", "snips", "dm", "dr"}
    assert section["exposure_deciles"]["target"]["exposures"] == 2
