"""Serving: the Redis store of the published lists (``store``), ``recsys publish`` (``publish``)
and ``recsys serve``, the HTTP service that reads the store."""
