"""Benchmark: ``clean`` then ``featurize`` on Spark ``local[2]``, against the same clean logic as one
DuckDB query (2 threads) on the same input, on the same machine, in the same run.

    .venv/bin/python benchmarks/clean_bench.py --events 1000000 10000000

For each size and case it writes a synthetic raw input (CSV, one file per day, in the REES46
contract) with a vectorised bulk generator. Two cases (``--case``, default both):
  default   duplicates, double clicks, malformed lines, null ids, missing sessions and bots
            (58% of the rows at 10M are bot rows, which leave clean before its second sort)
  bot_free  a well-formed log: 1% exact duplicate lines and nothing else, no bots, no rejected row
Then it times
  spark clean      recsys_spark.etl.clean.run (parse, quarantine, rules, pseudonyms, Parquet by date)
  spark featurize  recsys_spark.features.featurize.run on its output
  duckdb clean     the same rules as SQL: typed parse with reason codes, malformed lines set
                   aside, exact and near duplicates, sessions, bots, HMAC pseudonyms, Parquet by date
and prints events/s for each and the ratio spark clean / duckdb clean (target: <= 2.0 at 10M, in
both cases). The rows kept by Spark and DuckDB must agree, and the bot-free case must come out of
clean as generated (no row rejected, no bot, its duplicates found): else it stops with an error.
After clean it also times two floors inside it: Spark's CSV scan alone, and the scan plus
clean's parsing and validation (no shuffle, no rules, nothing written). ``--event-log DIR``
writes Spark's event log (stage and task times) for a profile.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_spark import schema  # noqa: E402
from recsys_spark.etl.pseudonym import hmac_pads  # noqa: E402

KEY = b"benchmark-key"
DAYS = 30
START = dt.date(2019, 10, 1)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dirt:
    """What :func:`bulk_generate` adds to a clickstream of sessions (the defaults: the default case).

    ``bots``: a scripted bot a day (hundreds of views seconds apart), and users drawn from a
    Zipf(1.3) law whose heaviest users run so many sessions at once that the rate rule flags
    them (together 58% of the rows at 10M). Without: user activity is lognormal (the heaviest
    of 250K users at 10M runs a few sessions a day) and sessions last at most 90 events (one
    hour; no day-end clipping), so no user-day breaks a rule.
    """

    bots: bool = True
    duplicate_share: float = 0.01  # exact copies of lines
    near_duplicate_share: float = 0.005  # double clicks, 1 s after the original
    null_id_share: float = 0.002
    missing_session_share: float = 0.05
    malformed_every: int = 500  # one line in this many, cut in half (at least one a day); 0: none


CASES = {
    "default": Dirt(),
    "bot_free": Dirt(bots=False, near_duplicate_share=0.0, null_id_share=0.0, missing_session_share=0.0,
                     malformed_every=0),
}
_MAX_BOT_FREE_SESSION = 90


def bulk_generate(raw: Path, n_events: int, seed: int = 7, dirt: Dirt = Dirt()) -> dict[str, int]:
    """Write about ``n_events`` raw lines as DAYS daily CSV files; returns counts of the dirt.

    The default ``dirt`` writes the same bytes as before it was a parameter."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    n_users = max(100, n_events // 40)
    n_items = max(100, n_events // 200)
    item_price = np.round(rng.lognormal(3.5, 1.0, n_items), 2)
    item_category = rng.integers(0, 200, n_items)
    category_ids = 2_053_013_552_000_000_000 + np.arange(200, dtype=np.int64) * 7919
    brands = np.array([f"brand{i}" for i in range(300)], dtype=object)
    item_brand = rng.integers(0, 300, n_items)
    kinds = np.array(["view", "cart", "remove_from_cart", "purchase"], dtype=object)
    counts = dict(lines=0, duplicates=0, malformed=0, bots=0)
    per_day = n_events // DAYS
    if not dirt.bots:
        activity = rng.lognormal(0.0, 1.0, n_users)
        activity /= activity.sum()
    for day in range(DAYS):
        date = START + dt.timedelta(days=day)
        n_sessions = max(1, per_day // 8)
        lengths = rng.geometric(1 / 8, n_sessions)
        if not dirt.bots:
            lengths = np.minimum(lengths, _MAX_BOT_FREE_SESSION)
        n = int(lengths.sum())
        session = np.repeat(np.arange(n_sessions), lengths)
        if dirt.bots:
            user = (rng.zipf(1.3, n_sessions) % n_users)[session] + 510_000_000
        else:
            user = rng.choice(n_users, n_sessions, p=activity)[session] + 510_000_000
        start = rng.integers(0, 86_400 - 3600, n_sessions)[session]
        step = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        t = start + step * 40 + rng.integers(0, 30, n)
        item = rng.zipf(1.2, n) % n_items
        kind = kinds[np.minimum(rng.geometric(0.85, n) - 1, 3)]
        sessions = np.array([f"{day:02d}-{s:08x}-4000-8000-{s * 7919 % 16**8:08x}" for s in range(n_sessions)],
                            dtype=object)[session]
        sessions[rng.random(n) < dirt.missing_session_share] = ""
        # bots: a few users with hundreds of views a few seconds apart
        n_bot = min(400, n // 200) if dirt.bots else 0
        bot_t = rng.integers(0, 80_000) + np.cumsum(rng.integers(1, 4, n_bot))
        frame = pd.DataFrame({
            "t": np.concatenate([t, bot_t]),
            schema.EVENT_TYPE: np.concatenate([kind, np.full(n_bot, "view", dtype=object)]),
            schema.PRODUCT_ID: np.concatenate([item, rng.integers(0, n_items, n_bot)]) + 1_000_000,
            "item": np.concatenate([item, rng.integers(0, n_items, n_bot)]),
            schema.USER_ID: np.concatenate([user, np.full(n_bot, 599_000_000 + day)]),
            schema.USER_SESSION: np.concatenate([sessions, np.full(n_bot, f"bot-{day}", dtype=object)]),
        })
        counts["bots"] += n_bot
        it = frame["item"].to_numpy()
        frame[schema.CATEGORY_ID] = category_ids[item_category[it]]
        frame[schema.CATEGORY_CODE] = "electronics.smartphone"
        frame[schema.BRAND] = brands[item_brand[it]]
        frame[schema.PRICE] = item_price[it]
        seconds = np.clip(frame["t"].to_numpy(), 0, 86_399)
        stamp = pd.to_datetime(date) + pd.to_timedelta(seconds, unit="s")
        frame[schema.EVENT_TIME] = stamp.strftime("%Y-%m-%d %H:%M:%S UTC")
        frame = frame.sort_values("t", kind="stable")
        dup = frame.sample(frac=dirt.duplicate_share, random_state=day)  # exact copies
        near = frame.sample(frac=dirt.near_duplicate_share, random_state=day + 100).copy()  # double clicks
        near[schema.EVENT_TIME] = (pd.to_datetime(near[schema.EVENT_TIME].str[:19]) + pd.Timedelta(seconds=1)).dt.strftime(
            "%Y-%m-%d %H:%M:%S UTC")
        frame = pd.concat([frame, dup, near])[schema.RAW_COLUMNS]
        # Nullable integers: a plain int column would turn float on the first None and be written
        # as "510000007.0", which clean (rightly) rejects as a bad id.
        frame[schema.USER_ID] = frame[schema.USER_ID].astype("Int64")
        frame.loc[frame.sample(frac=dirt.null_id_share, random_state=day + 200).index, schema.USER_ID] = None
        lines = frame.to_csv(index=False, header=False).splitlines()
        bad = max(1, len(lines) // dirt.malformed_every) if dirt.malformed_every else 0
        lines += [lines[i][: len(lines[i]) // 2] for i in rng.integers(0, len(lines), bad)]
        counts["lines"] += len(lines)
        counts["duplicates"] += len(dup)
        counts["malformed"] += bad
        (raw / f"events-{date.isoformat()}.csv").write_text(",".join(schema.RAW_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    return counts


# ----------------------------------------------------------------------------- duckdb


def duckdb_clean(raw: Path, out: Path, threads: int = 2) -> dict[str, int]:
    """The clean rules as SQL over the same files; writes clean and quarantine Parquet by date."""
    import duckdb

    ipad, opad = hmac_pads(KEY)
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar=false")
    con.execute(f"SET threads={threads}")
    con.execute(f"SET temp_directory='{out}/tmp'")
    columns = ", ".join(f"'{c}': 'VARCHAR'" for c in schema.RAW_COLUMNS)
    hmac = lambda x: (f"substr(sha256(unhex('{opad.hex()}') || unhex(sha256(unhex('{ipad.hex()}') || "  # noqa: E731
                      f"CAST({x} AS VARCHAR)::BLOB))), 1, 16)")
    con.execute(f"""
    CREATE TEMP TABLE parsed AS
    WITH raw AS (
        SELECT * FROM read_csv('{raw}/*.csv', header = true, columns = {{{columns}}}, filename = true,
                               store_rejects = true, auto_detect = false, delim = ',', quote = '"')
    ), typed AS (
        SELECT *,
            CAST(regexp_extract(filename, '(\\d{{4}}-\\d{{2}}-\\d{{2}})', 1) AS DATE) AS load_date,
            TRY_CAST(replace(trim(event_time), ' UTC', '+00') AS TIMESTAMPTZ) AS ts,
            lower(trim(event_type)) AS kind,
            TRY_CAST(trim(product_id) AS BIGINT) AS product, TRY_CAST(trim(category_id) AS BIGINT) AS category,
            TRY_CAST(trim(user_id) AS BIGINT) AS uid, TRY_CAST(trim(price) AS DOUBLE) AS p,
            NULLIF(trim(user_session), '') AS session
        FROM raw
    )
    SELECT *, CAST(ts AT TIME ZONE 'UTC' AS DATE) AS event_date, epoch_us(ts) AS micros,
        CASE
            WHEN ts IS NULL THEN 'bad_event_time'
            WHEN CAST(ts AT TIME ZONE 'UTC' AS DATE) <> load_date THEN 'out_of_window'
            WHEN ts > now() THEN 'future_event_time'
            WHEN NULLIF(trim(user_id), '') IS NULL THEN 'null_user_id'
            WHEN NULLIF(trim(product_id), '') IS NULL THEN 'null_product_id'
            WHEN uid IS NULL OR product IS NULL OR (NULLIF(trim(category_id), '') IS NOT NULL AND category IS NULL)
                THEN 'bad_id'
            WHEN kind NOT IN ('view', 'cart', 'remove_from_cart', 'purchase') THEN 'unknown_event_type'
            WHEN p IS NOT NULL AND (isnan(p) OR p < 0 OR p > 1000000) THEN 'bad_price'
        END AS reason
    FROM typed
    """)
    rejects = con.sql("SELECT count(DISTINCT (file_id, line)) FROM reject_errors").fetchall()[0][0]
    con.execute(f"""
    COPY (
        SELECT reason, to_json(struct_pack(event_time, event_type, product_id, category_id, category_code, brand,
                                           price, user_id := {hmac('trim(user_id)')}, user_session)) AS raw_record,
               filename AS source_file, load_date
        FROM parsed WHERE reason IS NOT NULL
    ) TO '{out}/quarantine' (FORMAT parquet, PARTITION_BY (load_date), OVERWRITE_OR_IGNORE)
    """)
    con.execute(f"""
    COPY (
    WITH valid AS (SELECT * FROM parsed WHERE reason IS NULL),
    flagged AS (
        SELECT *,
            (micros, category, category_code, brand, p) IS NOT DISTINCT FROM
                lag((micros, category, category_code, brand, p)) OVER same_kind AS dup,
            micros - lag(micros) OVER same_kind <= 1000000 AS near
        FROM valid
        WINDOW same_kind AS (PARTITION BY event_date, uid, session, product, kind
                             ORDER BY micros, category, category_code, brand, p)
    ), deduplicated AS (
        SELECT *, count(DISTINCT product) OVER (PARTITION BY event_date, uid, session) AS distinct_items,
               min(micros) OVER (PARTITION BY event_date, uid, session) AS source_start
        FROM flagged WHERE NOT dup AND NOT coalesce(near, false)
    ), gaps AS (
        SELECT *, session IS NULL AND coalesce(micros - last_value(CASE WHEN session IS NULL THEN micros END
                IGNORE NULLS) OVER (PARTITION BY event_date, uid ORDER BY micros, product, kind, session
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) > 1800000000, true) AS starts,
            count(*) OVER (PARTITION BY event_date, uid ORDER BY micros
                           RANGE BETWEEN 59999999 PRECEDING AND CURRENT ROW) AS per_minute
        FROM deduplicated
    ), sessions AS (
        SELECT *, CASE WHEN session IS NULL THEN last_value(CASE WHEN starts THEN micros END IGNORE NULLS)
                  OVER (PARTITION BY event_date, uid ORDER BY micros, product, kind, session
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) ELSE source_start END AS session_start,
            max(per_minute) OVER user_day > 30 OR max(distinct_items) OVER user_day > 100 AS bot
        FROM gaps WINDOW user_day AS (PARTITION BY event_date, uid)
    ), kept AS (
        SELECT *, {hmac('uid')} AS pseudonym, floor((micros - session_start) / 14400000000)::INT AS piece
        FROM sessions WHERE NOT bot
    )
    SELECT ts AS event_time, kind AS event_type, product AS product_id, category AS category_id, category_code,
           brand, p AS price, pseudonym AS user_id,
           coalesce(session, substr(sha256(pseudonym || '|' || session_start), 1, 32))
               || CASE WHEN piece > 0 THEN '~' || piece ELSE '' END AS session_id,
           event_date
    FROM kept
    ) TO '{out}/clean' (FORMAT parquet, PARTITION_BY (event_date), OVERWRITE_OR_IGNORE)
    """)
    kept = con.sql(f"SELECT count(*) FROM read_parquet('{out}/clean/*/*.parquet')").fetchall()[0][0]
    read = con.sql("SELECT count(*) FROM parsed").fetchall()[0][0] + rejects
    return {"rows_read": int(read), "rows_kept": int(kept), "malformed": int(rejects)}


# ----------------------------------------------------------------------------- spark


def spark_stages(root: Path, master: str, driver_memory: str, featurize: bool,
                 event_log: Path | None = None) -> dict[str, float]:
    from recsys_spark import tracking
    from recsys_spark.config import load_config
    from recsys_spark.etl import clean
    from recsys_spark.spark import get_session

    os.environ["RECSYS_BENCH_KEY"] = KEY.decode()
    spark_conf = {"spark.ui.enabled": "false"}
    if event_log is not None:
        event_log.mkdir(parents=True, exist_ok=True)
        spark_conf.update({"spark.eventLog.enabled": "true", "spark.eventLog.dir": str(event_log),
                           "spark.eventLog.compress": "false"})
    cfg = load_config(None, [
        f"paths.root={root}", "clean.pseudonym_key_env=RECSYS_BENCH_KEY", f"spark.master={master}",
        f"spark.driver_memory={driver_memory}", "spark.shuffle_partitions=8", "spark.show_progress=false",
        "featurize.validation_days=3", "featurize.test_days=3",
        *[f"spark.conf.{k}='{v}'" for k, v in spark_conf.items()],
    ])
    spark = get_session(cfg.spark)
    # The MLflow store exists before the clock starts, as it does in a deployment (creating
    # a fresh sqlite store runs its schema migrations: 10-15 s on the 2-vCPU VM).
    tracking.setup(cfg)
    try:
        started, cpu = time.perf_counter(), jvm_cpu_s(spark)
        report = clean.run(spark, cfg)
        out = {"spark_clean_s": time.perf_counter() - started, "spark_clean_cpu_s": _minus(jvm_cpu_s(spark), cpu),
               "spark_rows_read": report["rows_read"],
               "spark_rows_kept": report["rows_kept"], "spark_rejected": sum(report["rejected"].values()),
               "spark_duplicates": report["duplicates"], "spark_near_duplicates": report["near_duplicates"],
               "spark_bot_rows": report["bot_rows"]}
        spark.sparkContext.setJobDescription("clean_bench floors")  # told apart in the event log
        out.update(spark_floors(spark, cfg))
        if featurize:
            from recsys_spark.features import featurize as featurize_stage

            started = time.perf_counter()
            try:
                featurize_stage.run(spark, cfg)
                out["spark_featurize_s"] = time.perf_counter() - started
            except Exception as exc:  # featurize is another stage's work in progress: report, go on
                out["spark_featurize_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return out
    finally:
        spark.stop()


def jvm_cpu_s(spark) -> float | None:
    """CPU seconds used so far by the JVM that runs Spark (a local master: all of it), read from
    /proc; None where that cannot be read. On a loaded machine it moves much less than wall time."""
    try:
        fields = Path(f"/proc/{spark.sparkContext._gateway.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, IndexError, ValueError):
        return None


def _minus(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def spark_floors(spark, cfg) -> dict[str, float]:
    """Lower bounds inside clean's time, measured after it (warm JVM, files in the page cache):
    the CSV scan alone (explicit schema, every column materialised, nothing written) and the scan
    plus clean's parsing and validation (no shuffle, no rules, no write)."""
    import datetime as dt

    from recsys_spark.etl import adapters, validate

    cc = cfg.clean
    files = adapters.list_input_files(spark, cfg.paths.resolve("raw"))
    raw = adapters.read_files(spark, files, cc.input_layout, cc.input_format)
    window = validate.EventWindow.from_config(cc.start_date, cc.end_date, dt.datetime.now(dt.timezone.utc))
    parsed = validate.parse_events(raw, window, validate.Rules.from_config(cc))
    out = {}
    for name, df in (("spark_scan_s", raw), ("spark_parse_s", parsed)):
        started = time.perf_counter()
        df.write.format("noop").mode("overwrite").save()
        out[name] = time.perf_counter() - started
    return out


def check_case(case: str, dirt: dict[str, int], spark: dict[str, float], duck: dict[str, int]) -> None:
    """Stop, loudly, when Spark and DuckDB keep different rows, or the bot-free case's data did
    not come out of clean as generated (then it would not measure what it claims to)."""
    if spark["spark_rows_kept"] != duck["rows_kept"]:
        raise SystemExit(f"{case}, {dirt['lines']:,} lines: Spark kept {spark['spark_rows_kept']:,} rows, DuckDB "
                         f"{duck['rows_kept']:,}: the two cleans disagree")
    if case == "bot_free":
        expected = {"spark_rejected": 0, "spark_near_duplicates": 0, "spark_bot_rows": 0,
                    "spark_duplicates": dirt["duplicates"], "spark_rows_read": dirt["lines"]}
        wrong = {k: (spark[k], v) for k, v in expected.items() if spark[k] != v}
        if wrong or duck["malformed"]:
            raise SystemExit(f"bot_free, {dirt['lines']:,} lines: not the shape generated ((found, expected): "
                             f"{wrong}, DuckDB malformed lines {duck['malformed']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--case", choices=[*CASES, "both"], default="both",
                        help="default: the generator's dirt and bots; bot_free: 1%% exact duplicates, nothing else")
    parser.add_argument("--workdir", default=None, help="where data and outputs go (default: a temp dir)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--no-featurize", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the data and outputs")
    parser.add_argument("--event-log", type=Path, default=None,
                        help="write Spark's event log (stage and task times) to this folder")
    parser.add_argument("--reuse-data", action="store_true",
                        help="reuse raw files a --keep run left in --workdir (their counts are in raw/_dirt.json)")
    args = parser.parse_args(argv)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="clean_bench_"))
    threads = int(args.master[len("local["):-1]) if args.master.startswith("local[") else 2
    cases = list(CASES) if args.case == "both" else [args.case]
    results = []
    for n in args.events:
        for case in cases:
            # The default case keeps its folder name, so --reuse-data finds data kept before cases.
            root = base / (f"n{n}" if case == "default" else f"n{n}-{case}")
            tag = f"[{n:,} {case}]"
            marker = root / "raw" / "_dirt.json"
            if args.reuse_data and marker.exists():
                for stale in root.iterdir():
                    if stale.name != "raw":
                        shutil.rmtree(stale, ignore_errors=True)
                dirt = json.loads(marker.read_text())
                print(f"{tag} reusing {dirt['lines']:,} lines in {root / 'raw'}: {dirt}", flush=True)
            else:
                shutil.rmtree(root, ignore_errors=True)
                started = time.perf_counter()
                dirt = bulk_generate(root / "raw", n, dirt=CASES[case])
                marker.write_text(json.dumps(dirt))
                print(f"{tag} generated {dirt['lines']:,} lines in {time.perf_counter() - started:.1f}s: {dirt}",
                      flush=True)
            # DuckDB runs in this process: its CPU time is this process's (the Spark JVM is another).
            started, cpu = time.perf_counter(), time.process_time()
            duck = duckdb_clean(root / "raw", (root / "duckdb").resolve(), threads)
            duck_s = time.perf_counter() - started
            duck["cpu_s"] = time.process_time() - cpu
            print(f"{tag} duckdb clean {duck_s:.1f}s {duck}", flush=True)
            spark = spark_stages(root, args.master, args.driver_memory, not args.no_featurize, args.event_log)
            print(f"{tag} spark {spark}", flush=True)
            check_case(case, dirt, spark, duck)
            results.append((case, dirt["lines"], spark, duck_s, duck))
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)

    print(f"\nclean / featurize, {args.master} vs DuckDB ({threads} threads), same input, same machine")
    print("(cpu: CPU seconds of the Spark JVM during clean, and of DuckDB: steadier than wall time under load)")
    print(f"{'case':>9} {'events':>12} {'spark clean s':>14} {'ev/s':>10} {'duckdb s':>9} {'ev/s':>10} {'ratio':>6} "
          f"{'cpu spark/duckdb s':>19} {'ratio':>6} "
          f"{'scan s':>7} {'scan+parse s':>13} {'featurize s':>12} {'ev/s':>10} {'kept spark/duckdb':>20}")
    for case, lines, spark, duck_s, duck in results:
        feat = spark.get("spark_featurize_s")
        cpu = spark["spark_clean_cpu_s"]
        cpu_text, cpu_ratio = ("-", "-") if cpu is None else (f"{cpu:.0f}", f"{cpu / duck['cpu_s']:.2f}")
        print(f"{case:>9} {lines:>12,} {spark['spark_clean_s']:>14.1f} {lines / spark['spark_clean_s']:>10,.0f} "
              f"{duck_s:>9.1f} {lines / duck_s:>10,.0f} {spark['spark_clean_s'] / duck_s:>6.2f} "
              f"{cpu_text:>11}/{duck['cpu_s']:<7.0f} {cpu_ratio:>6} "
              f"{spark['spark_scan_s']:>7.1f} {spark['spark_parse_s']:>13.1f} "
              f"{(f'{feat:.1f}' if feat else spark.get('spark_featurize_error', '-')[:12]):>12} "
              f"{(f'{lines / feat:,.0f}' if feat else '-'):>10} "
              f"{spark['spark_rows_kept']:>10,}/{duck['rows_kept']:<10,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
