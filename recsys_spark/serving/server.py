"""The ``serve`` stage (``recsys serve``): the real-time context read with Spark, then the HTTP
service (serving/service.py, serving/app.py) on ``serve.host:serve.port`` until SIGINT/SIGTERM; the
exposures are flushed and their counts (written, lost) are the stage's summary.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from typing import Any

import torch
import uvicorn

from recsys_spark.config import Config
from recsys_spark.serving.app import create_app
from recsys_spark.serving.realtime import load_context
from recsys_spark.serving.service import api_key, build_service
from recsys_spark.waits import stage_deadline

log = logging.getLogger(__name__)


def run(spark, cfg: Config) -> dict[str, Any]:
    """The ``serve`` stage (module docstring). Returns: the stage's summary once stopped."""
    with stage_deadline(spark, "serve", cfg.spark.stage_timeout_minutes):
        context = load_context(spark, cfg)
    spark.stop()  # not needed while serving: its JVM's memory goes back
    # A real-time list is one user's: torch's intra-op threads would only contend with the event
    # loop and each other (a list took 70 ms with the default threads on a busy 2-core VM, 7 ms with one).
    torch.set_num_threads(1)
    service = build_service(cfg, context)
    app = create_app(service, api_key(cfg))
    quiet_runtime()
    sc = cfg.serve
    log.info("serve: http://%s:%d (champion version %s, run date %s, exposures to %s, authentication %s)", sc.host,
             sc.port, service.champions.current.version, context.run_date, service.writer.root,
             "on" if api_key(cfg) else "off")
    # uvicorn stops gracefully on SIGINT / SIGTERM, then raises the signal again under the handler
    # it found: this one, so that the exposures are flushed and the summary printed, exit status 0.
    stops = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(uvicorn.Config(app, host=sc.host, port=sc.port, log_level="warning", access_log=False,
                                      loop="uvloop", http="httptools")).run()
    finally:
        summary = service.close()
        for sig, handler in stops.items():
            signal.signal(sig, handler)
    return {"served": f"http://{sc.host}:{sc.port}", **summary}


def quiet_runtime() -> None:
    """The interpreter's settings for serving, once everything long-lived is built.

    - ``gc.freeze()``: the model, the plan and the libraries (~450,000 objects on the demo) leave
      the collector's generations; a full collection scanned them all, a pause of 0.15 to 0.5 s
      in the middle of requests (the cached path's p99 of 151 ms at 1,000 requests/s).
    - a 1 ms thread switch interval (Python's default is 5 ms): a background thread (the exposure
      writer, a real-time block, the champion poll) gives the GIL back to the event loop within
      1 ms, not 5, so that it does not set the cached path's tail.
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.001)

