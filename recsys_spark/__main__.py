from recsys_spark.cli import main

raise SystemExit(main())
