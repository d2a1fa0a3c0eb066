"""Build the zip of the package that spark-submit ships with ``--py-files``.

    python -m recsys_spark.packaging dist/recsys_spark.zip
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def build_zip(out: str | Path) -> Path:
    """Zip ``recsys_spark/`` (Python sources only) so that ``import recsys_spark`` works from it.

    Returns:
        the path of the written zip.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(PACKAGE_DIR.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            zf.write(path, path.relative_to(PACKAGE_DIR.parent).as_posix())
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = build_zip(args[0] if args else "dist/recsys_spark.zip")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
