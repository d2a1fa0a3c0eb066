"""clean's reconciliation and its gates: what happened to the rows read, the report of it, and
the checks on the rejected and bot shares that stop a run before anything is published.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from recsys_spark import schema
from recsys_spark.config import CleanConfig
from recsys_spark.errors import DataQualityError, relax_hint
from recsys_spark.etl.rules import BehaviourRules

# Above this share of the rows read rejected (and at most clean.max_rejected_share), clean warns.
REJECTED_WARN_SHARE = 0.01


@dataclass(frozen=True)
class Outcome:
    """What happened to the rows read: the terms of the reconciliation."""

    rows_read: int
    rows_kept: int
    duplicates: int
    near_duplicates: int = 0
    bot_rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    # Rows of undated files dated outside the processed window: other runs' rows, not read here.
    outside_window: int = 0

    def check(self) -> None:
        """Raise DataQualityError unless read = kept + rejected + duplicates + near-duplicates + bots."""
        rejected = sum(self.rejected.values())
        accounted = self.rows_kept + rejected + self.duplicates + self.near_duplicates + self.bot_rows
        if self.rows_read != accounted:
            raise DataQualityError(
                f"clean does not reconcile: read {self.rows_read} != kept {self.rows_kept} + rejected {rejected} "
                f"{self.rejected} + duplicates {self.duplicates} + near-duplicates {self.near_duplicates} "
                f"+ bot rows {self.bot_rows} (off by {self.rows_read - accounted})"
            )


def build_report(outcome: Outcome, dates: list[str], clean_path: str, quarantine_path: str,
                 bots: dict[str, Any], fed_back: dict[str, Any] | None = None,
                 rejections: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contents of clean_report.json (and the stage's summary: a warning is printed with it);
    ``feedback``: :func:`feedback.clean_feedback`'s counts, when given; ``rejections``:
    :func:`rejection_report`'s, when given. ``warning``: the rejections', the bots' and the feedback's warnings."""
    report = {
        "rows_read": outcome.rows_read,
        "rows_kept": outcome.rows_kept,
        "rejected": dict(outcome.rejected),
        "duplicates": outcome.duplicates,
        "near_duplicates": outcome.near_duplicates,
        "bot_rows": outcome.bot_rows,
        "outside_window": outcome.outside_window,
        "bots": bots,
        "dates": list(dates),
        "clean_path": clean_path,
        "quarantine_path": quarantine_path,
    }
    if fed_back is not None:
        report["feedback"] = fed_back
    if rejections is not None:
        report["rejections"] = rejections
    warnings = [w for w in ((rejections or {}).get("warning"), bots["warning"], (fed_back or {}).get("warning")) if w]
    if warnings:
        report["warning"] = " | ".join(warnings)
    return report


def report_metrics(report: dict[str, Any], outcome: Outcome, bots: dict[str, Any],
                   rejections: dict[str, Any]) -> dict[str, Any]:
    """The report's figures as MLflow metrics: its counts, the rejections by reason, each bot
    rule's figures and the bot and rejected shares (``clean.`` before each name)."""
    metrics = {f"clean.{k}": v for k, v in report.items() if isinstance(v, int)}
    metrics.update({f"clean.rejected.{code}": n for code, n in outcome.rejected.items()})
    metrics.update({f"clean.bots.{rule}.{k}": v for rule, figures in bots["rules"].items()
                    for k, v in figures.items()})
    metrics["clean.bots.row_share"] = bots["row_share"]
    metrics["clean.rejected_share"] = rejections["share"]
    return metrics


# ----------------------------------------------------------------------------- the rejection gate


def top_reason(rejected: dict[str, int]) -> str:
    """The reason that rejected the most rows (the first in schema.REASON_CODES on a tie)."""
    return max(schema.REASON_CODES, key=lambda code: (rejected.get(code, 0), -schema.REASON_CODES.index(code)))


def rejection_report(outcome: Outcome, sample: list[list[str]]) -> dict[str, Any]:
    """What the validation rules rejected, for the gate and the report.

    Returns:
        ``rows`` and ``share`` (of the rows read) rejected, the ``top_reason`` and its ``top_rows``,
        ``sample`` (:func:`offending_sample` of the top reason; empty at or below 1%) and
        ``warning`` (filled in by :func:`check_rejected_share`, empty here).
    """
    rejected = sum(outcome.rejected.values())
    top = top_reason(outcome.rejected)
    return {"rows": rejected, "share": round(rejected / outcome.rows_read, 6) if outcome.rows_read else 0.0,
            "top_reason": top, "top_rows": outcome.rejected.get(top, 0), "sample": sample, "warning": ""}


def check_rejected_share(rejections: dict[str, Any], cc: CleanConfig, aside: str) -> None:
    """Above ``clean.max_rejected_share`` of the rows read rejected: a DataQualityError (one line:
    the share, the top reason with its count, a sample of its values, the key to raise). Above
    REJECTED_WARN_SHARE (1%): a warning in ``rejections`` (the report, the run summary, MLflow).

    Args:
        aside: where the stopped run's rejected rows are kept (publish.set_aside), for the message.
    """
    share = rejections["share"]
    if share <= min(REJECTED_WARN_SHARE, cc.max_rejected_share) or rejections["rows"] == 0:
        return
    values = ", ".join(f"{field} {value!r}" for field, value in rejections["sample"])
    pseudonymised = " (user ids pseudonymised)" if any(f == schema.USER_ID for f, _ in rejections["sample"]) else ""
    found = (f"{share:.1%} of the rows read were rejected ({rejections['rows']:,}); top reason "
             f"{rejections['top_reason']}: {rejections['top_rows']:,} rows" + (f", e.g. {values}{pseudonymised}" if values else ""))
    ids = sorted({f for f, _ in rejections["sample"] if f in cc.id_types and cc.id_types[f] == schema.ID_INTEGER})
    if rejections["top_reason"] == schema.REASON_BAD_ID and ids:
        found += ("; if the ids are not whole numbers (UUIDs, SKUs, zero-padded codes), set "
                  + " ".join(f"clean.id_types.{f}={schema.ID_STRING}" for f in ids))
    if share <= cc.max_rejected_share:
        rejections["warning"] = (f"{found}; more than {REJECTED_WARN_SHARE:.0%}, at most "
                                 f"clean.max_rejected_share={cc.max_rejected_share:g}: see the quarantine")
        return
    accept = min(1.0, math.ceil(share * 1000) / 1000 + (0.001 if math.ceil(share * 1000) / 1000 < share else 0.0))
    raise DataQualityError(
        f"clean: {found}; more than clean.max_rejected_share={cc.max_rejected_share:g}, so nothing was "
        f"published (this run's rejected rows are in {aside}) {relax_hint('clean.max_rejected_share', accept)}")


def check_kept(outcome: Outcome) -> None:
    """No clean run succeeds having kept no rows: DataQualityError naming where the rows went."""
    if outcome.rows_kept > 0:
        return
    rejected = sum(outcome.rejected.values())
    raise DataQualityError(
        f"clean: kept none of the {outcome.rows_read:,} rows read ({rejected:,} rejected, {outcome.duplicates:,} "
        f"duplicates, {outcome.near_duplicates:,} near-duplicates, {outcome.bot_rows:,} bot rows): nothing to "
        f"publish; check paths.raw, clean.start_date / clean.end_date and the bot rules (clean.bot_*)")


# ----------------------------------------------------------------------------- the bot rules' report

# rule -> (prefix of its counts in Fates.counts, its limit: a field of BehaviourRules and CleanConfig)
BOT_RULES = {
    "items_per_session": ("item_bot", "bot_max_distinct_items_per_session"),
    "events_per_minute": ("rate_bot", "bot_max_events_per_minute"),
}


def bot_report(fate: dict[str, int], rules: BehaviourRules) -> dict[str, Any]:
    """What each bot rule flagged, so that a user sees at once whether the rules fit the data.

    Args:
        fate: :meth:`Fates.counts`.

    Returns:
        ``rules``: per rule, the user-days and rows it flagged and their shares of the user-days
        and of the de-duplicated rows that met the rules (the items rule is applied first: a
        user-day that breaks both counts under it); ``row_share`` of both; ``warning`` (filled in
        by :func:`check_bot_share`, empty here).
    """
    rows = fate["valid"] - fate["duplicates"] - fate["near_duplicates"]
    days = fate["user_days"]
    out: dict[str, Any] = {"rows": rows, "user_days": days, "rules": {}}
    for rule, (prefix, limit) in BOT_RULES.items():
        flagged_rows, flagged_days = fate[f"{prefix}_rows"], fate[f"{prefix}_days"]
        out["rules"][rule] = {
            "limit": getattr(rules, limit),
            "user_days": flagged_days,
            "rows": flagged_rows,
            "user_day_share": round(flagged_days / days, 6) if days else 0.0,
            "row_share": round(flagged_rows / rows, 6) if rows else 0.0,
        }
    out["row_share"] = round(fate["bot_rows"] / rows, 6) if rows else 0.0
    out["warning"] = ""
    return out


def check_bot_share(bots: dict[str, Any], cc: CleanConfig) -> None:
    """Above ``clean.bot_max_row_share`` of the rows flagged as bots: a warning in ``bots`` (the
    report, the run summary, MLflow), or, with ``clean.bot_share_action=stop``, a
    DataQualityError before anything is published.
    """
    if bots["row_share"] <= cc.bot_max_row_share:
        return
    detail = ", ".join(f"{rule} over clean.{BOT_RULES[rule][1]}={f['limit']}: {f['row_share']:.1%} of rows in "
                       f"{f['user_days']} user-day(s)" for rule, f in bots["rules"].items() if f["rows"])
    message = (f"the bot rules flagged {bots['row_share']:.1%} of the rows ({detail}), more than "
               f"clean.bot_max_row_share={cc.bot_max_row_share:g}: they may not fit this data (a ratings-like or "
               f"bulk log); raise the rule's limit, or {relax_hint('clean.bot_max_row_share', 1.0)}")
    if cc.bot_share_action == "stop":
        raise DataQualityError(f"clean: {message}")
    bots["warning"] = message
