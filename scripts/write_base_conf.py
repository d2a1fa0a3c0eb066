"""Regenerate conf/base.yaml from the dataclass defaults (run after changing a default)."""

from pathlib import Path

import yaml

from recsys_spark.config import Config

NOTES = {
    "spark": "Spark session. Under spark-submit, --master and resources given there win.",
    "paths": "Storage. Relative paths are under `root`; URIs (hdfs://, s3a://, gs://, abfss://) pass through.",
    "mlflow": "Tracking. Empty tracking_uri = sqlite store + artifact folder under <root>/mlflow.\n"
    "# Credentials come from the environment (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN), never from here.",
    "generate": "Synthetic REES46-style clickstream (the `generate` stage).",
    "clean": "Validation, de-duplication, sessions, pseudonymisation. The HMAC key is read from the\n"
    "# environment variable named by pseudonym_key_env; allow_dev_key is for local demos only.",
    "featurize": "Vocabularies, behaviour sequences, the temporal split and the training file layout.",
    "train": "The two-tower sequential model and its data-parallel training.",
    "search": "Opt-in hyper-parameter search of the train stage (trials > 0): Optuna trials on validation,\n"
    "# nested MLflow runs `trial <n>`, then the final training with the best values.",
    "evaluate": "Full-ranking evaluation against baselines.",
    "score": "Batch top-K scoring from the registered model.",
    "publish": "The publish stage: a run date's recommendations into the Redis store (empty run_date = the latest).",
    "serve": "The Redis store of the served lists: written by publish, read by serve. The Redis password, if\n"
    "# any, comes from the environment variable named by redis_password_env, never from here (nor the API key:\n"
    "# api_key_env). `recsys serve`: its address, request limits, exposure writer and model polling.",
}


def main() -> None:
    lines = [
        "# Built-in defaults of every key (recsys_spark/config/). A test keeps this file equal to them:",
        "# after changing a default, run `python scripts/write_base_conf.py`.",
        "# Profiles extend it: conf/local.yaml (the quick start), conf/cluster.example.yaml.",
        "",
    ]
    for section, values in Config().to_dict().items():
        lines.append(f"# {NOTES[section]}")
        lines.append(yaml.safe_dump({section: values}, sort_keys=False, default_flow_style=False).rstrip())
        lines.append("")
    path = Path(__file__).resolve().parent.parent / "conf" / "base.yaml"
    text = keep_inline_comments("\n".join(lines), path.read_text() if path.exists() else "")
    path.write_text(text)
    print(f"wrote {path}")


def keep_inline_comments(text: str, previous: str) -> str:
    """Carry over the hand-written `# ...` after a key of the previous file (same line, same value)."""
    comments = {}
    for line in previous.splitlines():
        body, sep, comment = line.partition("  #")
        if sep and body.strip() and not body.lstrip().startswith("#"):
            comments[body.rstrip()] = line
    return "\n".join(comments.get(line.rstrip(), line) for line in text.splitlines()) + "\n"


if __name__ == "__main__":
    main()
