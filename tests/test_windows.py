import numpy as np
import pytest

from textgen.errors import CorpusError
from textgen.training.windows import epoch_starts, split_ids, window_dataset


def test_split_is_by_position_and_checks_window():
    ids = np.arange(100)
    split = split_ids(ids, 0.2, seq_length=10)
    assert list(split.valid) == list(range(80, 100))
    with pytest.raises(CorpusError, match="shorter than one window"):
        split_ids(np.arange(5), 0.0, seq_length=10)
    with pytest.raises(CorpusError, match="validation"):
        split_ids(np.arange(100), 0.05, seq_length=10)


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = epoch_starts(1000, 10, seed=1, epoch=3)
    assert np.array_equal(a, epoch_starts(1000, 10, seed=1, epoch=3))
    assert not np.array_equal(a, epoch_starts(1000, 10, seed=1, epoch=4))
    assert a.max() + 11 <= 1000 and len(set(a)) == len(a)


def test_windows_are_shifted_by_one():
    ids = np.arange(50, dtype=np.uint8)
    starts = np.array([0, 7, 20])
    ((x, y),) = list(window_dataset(ids, starts, seq_length=5, batch_size=3))
    assert x.shape == (3, 5) and y.shape == (3, 5) and x.dtype == y.dtype == np.int32
    assert np.array_equal(x[1], np.arange(7, 12))
    assert np.array_equal(y[1], np.arange(8, 13))
