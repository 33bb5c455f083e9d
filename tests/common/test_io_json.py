from __future__ import annotations

import pytest

from common.errors import DataError
from common.io import load_json, save_json


def test_load_json_round_trip_and_errors(tmp_path):
    save_json(tmp_path / "a.json", {"train": ["x"], "n": 2})
    assert load_json(tmp_path / "a.json") == {"train": ["x"], "n": 2}
    with pytest.raises(DataError, match="missing.json: split file not found"):
        load_json(tmp_path / "missing.json", "split file")
    (tmp_path / "bad.json").write_text('{"train": [')
    with pytest.raises(DataError, match="bad.json: cannot read the split file"):
        load_json(tmp_path / "bad.json", "split file")
