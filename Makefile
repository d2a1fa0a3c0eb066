# The two quick-start commands are `make demo` and `make test`; both set up .venv first.
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= conf/local.yaml
MLFLOW_DB := $(CURDIR)/work/mlflow/mlflow.db

.PHONY: setup airflow-env demo test test-fast package mlflow-ui clean-work serve

setup:
	@bash scripts/bootstrap.sh

airflow-env:  ## .venv-airflow: Airflow 3 and its Spark provider, for dags/recsys_daily.py
	@bash scripts/bootstrap_airflow.sh

demo: setup  ## the whole pipeline on generated sample data, local Spark, local MLflow
	$(BIN)/recsys run --config $(CONFIG)

serve: setup  ## after `make demo`: Redis, the latest lists published, the service on http://127.0.0.1:8000
	@bash scripts/serve.sh $(CONFIG) $(SERVE_ARGS)

# Two test processes: most tests wait on a JVM, a subprocess or one Python thread, so two keep two
# cores busy (TEST_WORKERS=0 runs them in this process, one after another).
TEST_WORKERS ?= 2

test: setup airflow-env  ## the default test suite (everything but GPU tests; the DAG's in .venv-airflow)
	$(BIN)/python -m pytest -m "not gpu" -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "unit" $(PYTEST_ARGS)

package: setup  ## dist/recsys_spark.zip for spark-submit --py-files
	$(BIN)/python -m recsys_spark.packaging dist/recsys_spark.zip

mlflow-ui: setup  ## open http://127.0.0.1:5000 on the local store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLFLOW_DB) --host 127.0.0.1 --port 5000

clean-work:
	rm -rf work dist
