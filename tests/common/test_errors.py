"""DataError: the message names the file, and the error survives pickling (worker process -> parent)."""

from __future__ import annotations

import pickle

from common.errors import DataError


def test_data_error_pickles_with_its_path_and_problem():
    for error in (DataError("/data/case7/image.npy", "file truncated"), DataError(None, "no cases")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is DataError and str(copy) == str(error)
        assert (copy.path, copy.problem) == (error.path, error.problem)
    assert str(DataError("/data/x.npy", "file truncated")) == "/data/x.npy: file truncated"
