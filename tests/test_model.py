import numpy as np
import pytest

from textgen import TextgenError, build_model
from textgen.model import get_weights, set_weights


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
def test_shapes(cell):
    model = build_model(11, embedding_dim=3, units=5, num_layers=2, dropout=0.1, cell=cell)
    out = model(np.zeros((2, 7), dtype=np.int32))
    assert tuple(out.shape) == (2, 7, 11)


def test_bad_arguments():
    with pytest.raises(TextgenError, match="cell"):
        build_model(10, embedding_dim=3, units=4, cell="transformer")
    with pytest.raises(TextgenError):
        build_model(10, embedding_dim=3, units=4, dropout=1.5)


def test_weights_round_trip_gives_identical_predictions():
    a = build_model(9, embedding_dim=3, units=4, num_layers=2)
    b = build_model(9, embedding_dim=3, units=4, num_layers=2)
    ids = np.random.default_rng(0).integers(0, 9, size=(2, 6)).astype(np.int32)
    assert not np.allclose(a(ids), b(ids))
    set_weights(b, get_weights(a))
    np.testing.assert_array_equal(np.asarray(a(ids)), np.asarray(b(ids)))
    bad = get_weights(a)
    bad["dense/bias"] = np.zeros(3)
    with pytest.raises(TextgenError, match="shape"):
        set_weights(b, bad)
