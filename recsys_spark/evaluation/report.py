"""The evaluation report: figures and one self-contained HTML page (PNG plots inlined as base64).

Everything here is a pure function of the JSON report that :mod:`~recsys_spark.evaluation.evaluate`
writes, so the page can be rebuilt from ``evaluation.json`` alone::

    python -c "import json, sys; from recsys_spark.evaluation.report import render_html; \
print(render_html(json.load(open(sys.argv[1]))))" work/reports/evaluation.json > evaluation.html
"""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Sequence

import jinja2

# How featurize split the data (evaluate.protocol; features/split.py).
SPLITS = {
    "temporal": "global cutoffs: the test users are those with a new item in the last featurize.test_days days, "
                "ranked from their history before that period",
    "leave_last_out": "per user: each user's last new item is the test target, ranked from the user's steps "
                      "before it; training holds every user's steps before their validation target (so other "
                      "users' later events), as in SASRec and RecBole",
}

DEFINITIONS = {
    "protocol": "full ranking over the whole catalogue (never sampled); a user's already-seen items are excluded; "
                "targets are the items a user first met after the cutoff",
    "recall@K": "hits in the top K / number of targets",
    "ndcg@K": "DCG of the top K / ideal DCG over min(K, targets) positions, gain 1/log2(rank + 1)",
    "map@K": "sum of precision@rank over hits in the top K / min(K, targets)",
    "hitrate@K": "1 if any target is in the top K",
    "precision@K": "hits in the top K / K (K even when fewer items were listed, as in RecBole and Microsoft "
                   "Recommenders)",
    "f1@K": "2 precision@K recall@K / (precision@K + recall@K), 0 when both are 0",
    "mrr": "1 / rank of the first hit within the largest K",
    "auc": "the probability that a random target is ranked above a random non-target item the user may get, over "
           "the whole catalogue ranking (ties count 1/2; seen, pad, out-of-vocabulary and blocked items left out)",
    "coverage@K": "distinct items in anyone's top K / catalogue size",
    "novelty@K": "mean self-information -log2(share of interactions) of the top-K items",
    "diversity@K": "share of pairs of top-K items in different categories (intra-list diversity)",
    "head_share@K": "share of top-K items that are head items (popularity bias)",
    "baselines": "co-occurrence and ALS are fitted on the training windows and tuned on validation by the primary "
                 "metric; popularity ranks by interactions before the cutoff",
    "value [low, high]": "the mean over the test users and its percentile bootstrap interval (users resampled with "
                         "replacement); with few users it is wide, and a difference inside it is noise",
    "paired difference": "a - b: the mean of the per-user differences over the users both were measured on, with "
                         "its bootstrap interval from the same resamples; an interval above 0 means a beats b on "
                         "these users beyond sampling noise; the gate requires its lower bound (model - champion) "
                         "to exceed evaluate.gate_min_improvement",
}

_SEGMENT_LABELS = {
    "all": "all users",
    "cold_users": "cold users",
    "warm_users": "warm users",
    "head_targets": "head targets",
    "tail_targets": "tail targets",
    "view_targets": "viewed targets",
    "cart_targets": "carted targets",
    "purchase_targets": "purchased targets",
}


def figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report's plots as matplotlib Figures.

    Returns:
        {"curves": Recall@K and NDCG@K against K per ranker (shaded: their intervals, when the
        report has them), "popularity_bias": head share of the top K per ranker, "segments": the
        primary metric per segment and ranker, and "paired" (when the report has paired
        differences): model - each other ranker on the primary metric, with its interval}.
    """
    # Here, not at the top: matplotlib (1 s) only draws the figures on the driver; the Spark
    # executors that import evaluate, and so this module, never need it.
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    ks, rankers = report["ks"], report["rankers"]
    curves = Figure(figsize=(10, 3.8))
    bounds = report.get("intervals", {})
    for axis, (metric, title) in zip(curves.subplots(1, 2), (("recall", "Recall@K"), ("ndcg", "NDCG@K"))):
        for ranker, values in rankers.items():
            (line,) = axis.plot(ks, [values[f"{metric}@{k}"] for k in ks], marker="o", label=ranker)
            band = [bounds.get(ranker, {}).get(f"{metric}@{k}") for k in ks]
            if all(b is not None for b in band):
                axis.fill_between(ks, [b[0] for b in band], [b[1] for b in band], color=line.get_color(), alpha=0.15)
        axis.set(xlabel="K", ylabel=title, title=f"{title}, full ranking, test users", xscale="log", xticks=ks)
        axis.set_xticklabels([str(k) for k in ks])
        # Only the chosen Ks are labelled: a log axis would add minor labels (6x10^0, 3x10^1 ...).
        axis.xaxis.set_minor_locator(NullLocator())
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    curves.tight_layout()

    bias = Figure(figsize=(10, 3.8))
    axis = bias.subplots()
    _grouped_bars(axis, [f"K={k}" for k in ks], {r: [v[f"head_share@{k}"] for k in ks] for r, v in rankers.items()})
    head_fraction = report["head_items"] / report["catalogue_size"] if report["catalogue_size"] else 0.0
    axis.axhline(head_fraction, color="black", linestyle="--", linewidth=1,
                 label=f"head items in the catalogue ({head_fraction:.1%})")
    axis.set(ylabel="share of head items in the top K", title="Popularity bias", ylim=(0, 1.05))
    axis.legend(fontsize=8)
    bias.tight_layout()

    primary = report["primary_metric"]
    segments = [s for s in _SEGMENT_LABELS if any(s in seg for seg in report["segments"].values())]
    seg_fig = Figure(figsize=(11, 4))
    axis = seg_fig.subplots()
    values = {
        ranker: [report["segments"][ranker].get(s, {}).get(primary, 0.0) for s in segments]
        for ranker in report["segments"]
    }
    users = report["segments"].get("model", {})
    labels = [f"{_SEGMENT_LABELS[s]}\n({users.get(s, {}).get('users', 0)} users)" for s in segments]
    _grouped_bars(axis, labels, values)
    axis.set(ylabel=primary, title=f"{primary} by segment")
    axis.tick_params(axis="x", labelsize=8)
    axis.legend(fontsize=8)
    seg_fig.tight_layout()
    out = {"curves": curves, "popularity_bias": bias, "segments": seg_fig}
    pairs = {pair: found[primary] for pair, found in report.get("paired", {}).items() if primary in found}
    if pairs:
        out["paired"] = paired_figure(pairs, primary, report.get("bootstrap", {}).get("confidence"))
    deciles = report.get("off_policy", {}).get("exposure_deciles")
    if deciles:
        out["exposure"] = exposure_figure(deciles)
    return out


def exposure_figure(deciles: Mapping[str, Mapping[str, Any]]):
    """Exposure share by training-popularity decile, one bar group per decile.

    Args:
        deciles: {"logged": {"shares": [10], "exposures": n, "unknown": n}, "target": {...}}:
            the logged feedback's exposures and the target policy's lists on the same users.

    Returns:
        a matplotlib Figure.
    """
    # Here, not at the top: matplotlib (1 s) only draws the figures on the driver; the Spark
    # executors that import evaluate, and so this module, never need it.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.8))
    axis = figure.subplots()
    labels = {"logged": "logged policy (clean feedback)", "target": "target policy (challenger, score settings)"}
    values = {f"{labels.get(name, name)}, {found['exposures']:,} exposures": found["shares"]
              for name, found in deciles.items() if found["exposures"]}
    _grouped_bars(axis, [str(d) for d in range(1, len(next(iter(deciles.values()))["shares"]) + 1)], values)
    axis.axhline(0.1, color="black", linestyle="--", linewidth=1, label="uniform over the catalogue (10%)")
    axis.set(xlabel="training popularity decile (1 = least popular items, 10 = most)", ylabel="share of exposures",
             title="Exposure by item popularity", ylim=(0, 1.05))
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def paired_figure(pairs: Mapping[str, Mapping[str, float]], metric: str, confidence: float | None = None):
    """The paired differences on one metric as points with their intervals, one row per pair.

    Args:
        pairs: {"model_vs_als": {"diff", "low", "high", "users"}}.
        metric: e.g. "ndcg@20" (the axis label).
        confidence: the intervals' level, for the title (None: not said).

    Returns:
        a matplotlib Figure.
    """
    # Here, not at the top: matplotlib (1 s) only draws the figures on the driver; the Spark
    # executors that import evaluate, and so this module, never need it.
    from matplotlib.figure import Figure

    names = list(pairs)
    figure = Figure(figsize=(8, 1.2 + 0.5 * len(names)))
    axis = figure.subplots()
    colours = ["tab:green" if pairs[n]["low"] > 0 else "tab:red" if pairs[n]["high"] < 0 else "tab:gray"
               for n in names]
    rows = list(range(len(names)))
    axis.hlines(rows, [pairs[n]["low"] for n in names], [pairs[n]["high"] for n in names], colors=colours,
                linewidth=2)
    axis.scatter([pairs[n]["diff"] for n in names], rows, c=colours, zorder=3)
    axis.axvline(0.0, color="black", linewidth=1)
    axis.set_yticks(rows)
    axis.set_yticklabels([f"{n.replace('_vs_', ' - ')} ({pairs[n]['users']:,} users)" for n in names])
    axis.invert_yaxis()
    level = f"{confidence:.0%} " if confidence else ""
    axis.set(xlabel=f"difference in {metric}", title=f"Paired differences on {metric}, {level}bootstrap intervals")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def _grouped_bars(axis, groups: Sequence[str], values: Mapping[str, Sequence[float]]) -> None:
    width = 0.8 / max(len(values), 1)
    for i, (name, heights) in enumerate(values.items()):
        axis.bar([g + (i - (len(values) - 1) / 2) * width for g in range(len(groups))], heights, width, label=name)
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels(groups)
    axis.grid(axis="y", alpha=0.3)


def png_base64(figure) -> str:
    """A Figure as a base64 PNG (for an ``<img src="data:image/png;base64,...">``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def grid_table(rows: Sequence[Mapping[str, Any]], primary: str) -> str:
    """A baseline grid as fixed-width text: its parameters and the primary metric, best first."""
    if not rows:
        return ""
    params = [key for key in rows[0] if "@" not in key and key not in ("mrr", "auc")]
    ordered = sorted(rows, key=lambda r: -r[primary])
    lines = ["".join(f"{p:>12}" for p in params) + f"{primary:>12}"]
    lines += ["".join(f"{str(r[p]):>12}" for p in params) + f"{r[primary]:>12.4f}" for r in ordered]
    return "\n".join(lines)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation of {{ r.registered_model }} version {{ r.model_version }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
 table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
 th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 th { background: #f3f3f3; }
 .best { font-weight: bold; background: #eef7ee; }
 .above { background: #e6f4e6; } .below { background: #fbeee6; }
 .gate { padding: 0.8em 1em; border-radius: 6px; margin: 1em 0; }
 .promoted { background: #e6f4e6; border: 1px solid #7b7; }
 .not_promoted { background: #fbeee6; border: 1px solid #d96; }
 img { max-width: 100%; }
 dt { font-weight: bold; } dd { margin: 0 0 0.4em 1.5em; }
</style></head><body>
<h1>Offline evaluation: {{ r.registered_model }} version {{ r.model_version }}</h1>
<p>{{ r.users_with_targets }} test users with targets (of {{ r.users }}), a catalogue of {{ r.catalogue_size }}
items ({{ r.head_items }} head items). Primary metric: <b>{{ r.primary_metric }}</b>.
{% if r.get("protocol") %}Split: <b>{{ r.protocol }}</b>{% if r.get("protocol_reason") %} ({{ r.protocol_reason }}){% endif %}.{% endif %}
MLflow run <code>{{ r.mlflow_run_id }}</code>.</p>
{% if boot %}<p>Every mean over users is shown as <code>value [low, high]</code>: its {{ "%.0f" | format(100 * boot.confidence) }}%
percentile bootstrap interval over the {{ r.users_evaluated }} users evaluated ({{ boot.samples }} resamples of the
users, seed {{ boot.seed }}). Coverage is measured over the catalogue and has none.</p>{% endif %}

<div class="gate {{ r.gate.verdict }}"><b>Registry gate: {{ r.gate.verdict | replace("_", " ") }}</b>
(challenger version {{ r.gate.challenger_version }}, {{ r.champion_alias }} was
{{ r.gate.champion_version or "none" }})<ul>{% for reason in r.gate.reasons %}<li>{{ reason }}</li>{% endfor %}</ul></div>

<h2>Model against baselines (test)</h2>
{% for k in r.ks %}
<table><tr><th>ranker</th><th>users</th>{% for m in metrics_at(k) %}<th>{{ m }}</th>{% endfor %}</tr>
{% for ranker, values in r.rankers.items() %}<tr><td>{{ ranker }}</td><td>{{ values.get("users", "") }}</td>
{% for m in metrics_at(k) %}<td class="{{ 'best' if best.get(m) == ranker else '' }}">{{ cell(ranker, m) }}</td>{% endfor %}
</tr>{% endfor %}</table>
{% endfor %}
<p>MRR: {% for ranker, values in r.rankers.items() %}{{ ranker }} {{ cell(ranker, "mrr") }}{{ ", " if not loop.last }}{% endfor %}</p>
{% if has_auc %}<p>AUC: {% for ranker, values in r.rankers.items() %}{{ ranker }} {{ cell(ranker, "auc") }}{{ ", " if not loop.last }}{% endfor %}</p>{% endif %}
<img src="data:image/png;base64,{{ images.curves }}" alt="Recall@K and NDCG@K curves">

{% if paired %}
<h2>Paired differences (test)</h2>
<p>The model minus each other ranker: the mean of the per-user differences over the users both ranked, with its
bootstrap interval. Green: above 0 beyond sampling noise; red: below; uncoloured: not distinguishable on these users.</p>
<table><tr><th>comparison</th><th>users</th>{% for m in paired_metrics %}<th>{{ m }}</th>{% endfor %}</tr>
{% for pair, found in paired.items() %}<tr><td>{{ pair | replace("_vs_", " - ") }}</td>
<td>{{ found[paired_metrics[0]].users }}</td>
{% for m in paired_metrics %}<td class="{{ side(found[m]) }}">{{ difference(found[m]) }}</td>{% endfor %}
</tr>{% endfor %}</table>
{% if images.paired %}<img src="data:image/png;base64,{{ images.paired }}" alt="paired differences with intervals">{% endif %}
{% endif %}

<h2>Exploration</h2>
{% if ope.get("available") %}
<p>Off-policy evaluation of the challenger (version {{ ope.target.model_version }}) under the score settings
(policy <b>{{ ope.target.policy }}</b>, explore_share {{ ope.target.explore_share }}, top_k {{ ope.target.top_k }},
{{ ope.target.propensity_samples }} Monte-Carlo lists per user) on the clean feedback of {{ ope.run_dates | length }}
run date(s) ({{ ope.run_dates | first }} to {{ ope.run_dates | last }}): {{ ope.lists }} lists, {{ ope.exposures }}
exposures, {{ ope.clicks }} clicks, logged by {{ ope.logged_policies | join(", ") }}.
{% if ope.lists_without_history %}{{ ope.lists_without_history }} lists of users without any event before their run
date are left out.{% endif %}</p>
<table><tr><th>estimator</th><th>clicks per list [low, high]</th><th>effective sample size</th><th>note</th></tr>
<tr><td>logged policy (on-policy)</td><td>{{ estimate(ope.logged) }}</td><td>{{ "{:,.1f}".format(ope.logged.ess) }}</td><td></td></tr>
{% for name, found in ope.estimates.items() %}<tr><td>{{ name }}</td><td>{{ estimate(found) }}</td>
<td>{{ "{:,.1f}".format(found.ess) }}</td><td>{{ found.reason or "" }}</td></tr>{% endfor %}</table>
<p>Per-position importance weights (target / logged probability of each item in its slot), summed per list and
averaged over lists, with {{ "%.0f" | format(100 * ope.logged.confidence) }}% bootstrap intervals over lists; an
estimate whose weights have an effective sample size below {{ ope.min_ess }} is withheld. History: {{ ope.history }}.
Reward model (DM, DR): {{ ope.reward_model }}.</p>
{% else %}
<p>{{ ope.get("note", "no off-policy evaluation in this report") }}</p>
{% endif %}
{% if images.exposure %}<img src="data:image/png;base64,{{ images.exposure }}" alt="exposure share by popularity decile">
<p>Exposures by decile of the items' training popularity: the logged policy's from the clean feedback, the target's
from the lists it would serve the same users on the same dates.</p>{% endif %}

<h2>Popularity bias</h2>
<img src="data:image/png;base64,{{ images.popularity_bias }}" alt="head share of the top K">

<h2>Segments: {{ r.primary_metric }}</h2>
<table><tr><th>segment</th><th>users</th>{% for ranker in r.segments %}<th>{{ ranker }}</th>{% endfor %}</tr>
{% for segment in segments %}<tr><td>{{ segment }}</td><td>{{ r.segments.model.get(segment, {}).get("users", 0) }}</td>
{% for ranker, values in r.segments.items() %}<td>{{ "%.4f" | format(values.get(segment, {}).get(r.primary_metric, 0.0)) }}</td>{% endfor %}
</tr>{% endfor %}</table>
<img src="data:image/png;base64,{{ images.segments }}" alt="primary metric by segment">

<h2>Baseline tuning (validation)</h2>
{% for family, tuned in r.baselines.items() %}
<h3>{{ family }}: chosen {% for key, value in tuned.chosen.items() %}{{ key }}={{ value }}{{ ", " if not loop.last }}{% endfor %}</h3>
<table><tr>{% for key in tuned.grid[0] %}<th>{{ key }}</th>{% endfor %}</tr>
{% for row in tuned.grid | sort(attribute=tuned.metric, reverse=True) %}<tr>
{% for key, value in row.items() %}<td>{{ "%.4f" | format(value) if value is float else value }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endfor %}

<h2>Definitions</h2><dl>{% for key, text in r.definitions.items() %}<dt>{{ key }}</dt><dd>{{ text }}</dd>{% endfor %}</dl>
</body></html>
"""


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as one HTML page with its figures inlined.

    Args:
        report: the evaluation report (see evaluate.run): ks, rankers, segments, baselines,
            gate, definitions, counts; optionally bootstrap, intervals ({ranker: {metric:
            [low, high]}}), users_evaluated and paired ({pair: {metric: {diff, low, high,
            users}}}), shown where present; off_policy (evaluation/offpolicy.py: the
            Exploration section, which says so when there is no feedback).

    Returns:
        the HTML text.
    """
    first = next(iter(report["rankers"].values()), {})

    def metrics_at(k: int) -> list[str]:
        """The columns of the table at K that the report holds (older reports lack precision and F1)."""
        names = [f"{m}@{k}" for m in ("recall", "ndcg", "map", "hitrate", "precision", "f1", "coverage", "novelty",
                                      "diversity", "head_share")]
        return [name for name in names if name in first]

    names = [m for k in report["ks"] for m in metrics_at(k)]
    # Highlight the best ranker of each metric where higher is better (not the popularity bias).
    best = {m: max(report["rankers"], key=lambda r: report["rankers"][r][m]) for m in names if "head_share" not in m}
    segments = [s for s in _SEGMENT_LABELS if s in report["segments"].get("model", {})]
    bounds = report.get("intervals", {})
    paired = report.get("paired", {})
    paired_metrics = list(next(iter(paired.values()), {}))

    def cell(ranker: str, metric: str) -> str:
        """``value [low, high]``, or the value alone where it has no interval (coverage)."""
        value = report["rankers"][ranker][metric]
        found = bounds.get(ranker, {}).get(metric)
        return f"{value:.4f} [{found[0]:.4f}, {found[1]:.4f}]" if found else f"{value:.4f}"

    def difference(found: Mapping[str, float]) -> str:
        return f"{found['diff']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}]"

    def side(found: Mapping[str, float]) -> str:
        return "above" if found["low"] > 0 else "below" if found["high"] < 0 else ""

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    images = {name: png_base64(fig) for name, fig in figures(report).items()}
    images.setdefault("paired", "")
    images.setdefault("exposure", "")

    def estimate(found: Mapping[str, Any]) -> str:
        """``value [low, high]``, or "withheld" where the estimator gave none."""
        if found["value"] is None:
            return "withheld"
        return f"{found['value']:.4f} [{found['low']:.4f}, {found['high']:.4f}]"
    return env.from_string(_TEMPLATE).render(
        r=report, images=images, metrics_at=metrics_at, best=best, segments=segments, cell=cell,
        has_auc="auc" in first, paired=paired, paired_metrics=paired_metrics, difference=difference, side=side,
        boot=report.get("bootstrap"), ope=report.get("off_policy", {}), estimate=estimate,
    )
