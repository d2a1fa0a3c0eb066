"""The champion the service ranks with: the registered model at ``score.model_alias``, followed
as the alias moves.

A background thread asks the registry every ``serve.model_poll_seconds`` which version holds the
alias (``score.model_version`` > 0 pins one version: no polling). When it changed, the new
version is downloaded, its plan built and one list ranked with it (so a model that cannot rank
never serves), and only then is the reference swapped: one assignment, atomic in Python. A
request reads :attr:`ChampionHolder.current` once and uses that champion to the end, so it
never mixes two models and never waits for a load; a load that fails leaves the old champion
in place (``serve.model_loads{outcome="failed"}``) and is tried again at the next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from recsys_spark.config import Config
from recsys_spark.models import registry
from recsys_spark.models.bundle import ranker_label
from recsys_spark.scoring import policies
from recsys_spark.serving.realtime import RealtimeContext, RealtimeRanker, build_ranker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """One loaded model version and what its answers carry.

    Args:
        version: the registered version, e.g. "3".
        policy: ``score.explore_policy``; policy_version: ``policies.policy_version`` of it.
        ranker: "the model", or the tuned baseline the gate served (e.g. "EASE (tuned)").
        lists: the version's real-time and fallback lists.
        loaded_at: time.time() of the load.
    """

    version: str
    policy: str
    policy_version: str
    ranker: str
    lists: RealtimeRanker
    loaded_at: float


# (version or None for the alias) -> (bundle, version): registry.load_bundle by default.
Loader = Callable[[str | None], tuple[object, str]]
# () -> the version holding the alias, or None: registry.alias_version by default.
Resolver = Callable[[], str | None]


class ChampionHolder:
    """Holds the current :class:`Champion` and replaces it when the alias moves.

    Args:
        cfg: the service's config (registry, alias, score settings, poll interval).
        context: the real-time context every champion's plan is built over.
        loader, resolver: how a version is loaded and the alias resolved (the registry's, by
            default; tests pass their own).
        on_load: called with ("loaded" | "failed", version) after each load attempt (metrics).
    """

    def __init__(self, cfg: Config, context: RealtimeContext, loader: Loader | None = None,
                 resolver: Resolver | None = None, on_load: Callable[[str, str], None] | None = None):
        self.cfg = cfg
        self.context = context
        self._loader = loader or self._registry_loader
        self._resolver = resolver or self._registry_resolver
        self._on_load = on_load or (lambda outcome, version: None)
        self.current: Champion | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error = ""

    @property
    def pinned(self) -> bool:
        return self.cfg.score.model_version > 0

    def load(self, version: str | None = None) -> Champion:
        """Load ``version`` (None: the alias's, or the pinned one), check it ranks, make it current."""
        sc = self.cfg.score
        wanted = str(sc.model_version) if self.pinned else version
        try:
            bundle, got = self._loader(wanted)
            lists = build_ranker(bundle, self.context, self.cfg)
            champion = Champion(got, sc.explore_policy, policies.policy_version(sc, got),
                                ranker_label(bundle.ranker_name), lists, time.time())
        except Exception as exc:
            self.last_error = f"loading version {wanted or '@' + sc.model_alias}: {exc}"
            self._on_load("failed", wanted or "")
            raise
        previous = self.current
        self.current = champion  # the swap: requests that read the old one finish with it
        self.last_error = ""
        self._on_load("loaded", got)
        log.info("serve: champion is now version %s (%s)%s", got, champion.ranker,
                 f", was version {previous.version}" if previous else "")
        return champion

    def poll_once(self) -> bool:
        """Load the alias's version when it is not the current one. Returns: True when it swapped."""
        if self.pinned:
            return False
        try:
            version = self._resolver()
        except Exception as exc:  # noqa: BLE001 - an unreachable registry: keep serving, retry later
            self.last_error = f"resolving @{self.cfg.score.model_alias}: {exc}"
            log.warning("serve: %s", self.last_error)
            return False
        if version is None or (self.current is not None and self.current.version == version):
            return False
        try:
            self.load(version)
        except Exception:  # noqa: BLE001 - the old champion keeps serving
            log.exception("serve: could not load version %s of @%s; keeping version %s", version,
                          self.cfg.score.model_alias, self.current.version if self.current else "none")
            return False
        return True

    def start(self) -> "ChampionHolder":
        """Poll in a background thread every ``serve.model_poll_seconds`` (nothing to do when pinned)."""
        if self.pinned:
            return self
        self._thread = threading.Thread(target=self._run, name="champion-poll", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.serve.model_poll_seconds):
            self.poll_once()

    def _registry_loader(self, version: str | None) -> tuple[object, str]:
        return registry.load_bundle(self.cfg, alias=self.cfg.score.model_alias,
                                    version=int(version) if version else None)

    def _registry_resolver(self) -> str | None:
        return registry.alias_version(self.cfg, self.cfg.score.model_alias)
