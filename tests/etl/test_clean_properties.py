"""Property-based tests of ``clean.run``: any mix of defects (none included), any number of files
and partitions. The counts reconcile, every count matches what was written, and a re-run gives
byte-identical Parquet files."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_spark import schema
from recsys_spark.config import load_config
from recsys_spark.etl import clean

pytestmark = pytest.mark.e2e

KEY_ENV = "RECSYS_TEST_PROPERTY_KEY"
HEADER = ",".join(schema.RAW_COLUMNS)
DAYS = ["2019-10-01", "2019-10-02", "2019-10-03"]
# A defect of each kind: (reason code or None for an exact duplicate, how to spoil a good line).
DEFECTS = {
    schema.REASON_MALFORMED: lambda f: ",".join(f[:5]),  # cut short
    schema.REASON_NULL_USER: lambda f: ",".join([*f[:7], "", f[8]]),
    schema.REASON_UNKNOWN_EVENT: lambda f: ",".join([f[0], "wishlist", *f[2:]]),
    schema.REASON_BAD_PRICE: lambda f: ",".join([*f[:6], "-3", *f[7:]]),
}


@st.composite
def logs(draw):
    """Files of CSV lines, and what clean must count: read, rejected by reason, duplicates."""
    n_files = draw(st.integers(1, 3))
    users = draw(st.integers(1, 6))
    files: dict[str, list[str]] = {}
    expected = {"rows_read": 0, "duplicates": 0, "rejected": {}}
    for f in range(n_files):
        day = DAYS[f % len(DAYS)]
        # Good events: per user at most one event per 10 s (no near-duplicates, no bot rule).
        n_good = draw(st.integers(0 if f else 1, 12))
        lines = []
        for i in range(n_good):
            user = 541_000 + draw(st.integers(0, users - 1))
            second = i * 10 + f
            kind = draw(st.sampled_from(["view", "cart", "purchase"]))
            product = draw(st.integers(1, 30))
            lines.append(f"{day} 10:{second // 60:02d}:{second % 60:02d} UTC,{kind},{product},7,a.b,acme,9.99,"
                         f"{user},s{user}")
        spoiled = []
        for reason in draw(st.lists(st.sampled_from([*DEFECTS, "duplicate"]), max_size=6)):
            if not lines:
                break
            source = lines[draw(st.integers(0, len(lines) - 1))]
            if reason == "duplicate":
                spoiled.append(source)
                expected["duplicates"] += 1
            else:
                spoiled.append(DEFECTS[reason](source.split(",")))
                expected["rejected"][reason] = expected["rejected"].get(reason, 0) + 1
        body = lines + spoiled
        order = draw(st.permutations(range(len(body))))
        files[f"events-{day}-{f}.csv"] = [body[i] for i in order]
        expected["rows_read"] += len(body)
    return files, expected


def checksums(root: Path) -> dict[str, str]:
    """Per partition folder, the sorted SHA-256 of its Parquet files (part names hold a random id)."""
    out: dict[str, list[str]] = {}
    for path in root.rglob("*.parquet"):
        out.setdefault(str(path.parent.relative_to(root)), []).append(hashlib.sha256(path.read_bytes()).hexdigest())
    return {k: ",".join(sorted(v)) for k, v in out.items()}


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(log=logs(), partitions=st.integers(1, 3), files_per_day=st.integers(1, 2))
@pytest.mark.timeout(900)
def test_any_mix_of_defects_reconciles_and_reruns_byte_identical(spark, log, partitions, files_per_day,
                                                                 monkeypatch):
    files, expected = log
    monkeypatch.setenv(KEY_ENV, "property-key")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        raw = root / "raw"
        raw.mkdir()
        for name, lines in files.items():
            (raw / name).write_text("\n".join([HEADER, *lines]) + "\n")
        spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
        try:
            # Up to 6 defects among a dozen good rows: far above the rejection gate (test_clean tests it).
            cfg = load_config(None, [f"paths.root={root}", f"clean.pseudonym_key_env={KEY_ENV}",
                                     f"clean.output_files_per_day={files_per_day}", "clean.max_rejected_share=1.0"])
            first = clean.run(spark, cfg)
            written = {t: checksums(root / t) for t in ("clean", "quarantine")}
            again = clean.run(spark, cfg)
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", "2")

        assert first["rows_read"] == expected["rows_read"]
        assert first["duplicates"] == expected["duplicates"] and first["near_duplicates"] == 0
        assert first["bot_rows"] == 0
        assert first["rejected"] == {code: expected["rejected"].get(code, 0) for code in schema.REASON_CODES}
        rejected = sum(first["rejected"].values())
        assert first["rows_kept"] == expected["rows_read"] - rejected - expected["duplicates"]
        assert json.loads((root / "reports" / clean.REPORT_FILE).read_text())["rows_kept"] == first["rows_kept"]
        assert {k: v for k, v in again.items()} == first
        assert {t: checksums(root / t) for t in ("clean", "quarantine")} == written
        assert written["clean"], "no clean output at all"
