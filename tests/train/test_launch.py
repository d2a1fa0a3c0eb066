"""The launchers' check of the ranks' results (train/launch.py)."""

from __future__ import annotations

import pytest

from recsys_spark.errors import DataQualityError
from recsys_spark.train.launch import check_ranks

pytestmark = pytest.mark.unit


def test_check_ranks_returns_rank_zero_and_refuses_diverged_weights():
    main = {"rank": 0, "checksum": "abc", "state_dict": {}}
    assert check_ranks([{"rank": 1, "checksum": "abc"}, main]) is main
    with pytest.raises(DataQualityError, match="different weights"):
        check_ranks([main, {"rank": 1, "checksum": "abd"}])
    with pytest.raises(DataQualityError, match="rank 0"):
        check_ranks([{"rank": 1, "checksum": "abc"}])
