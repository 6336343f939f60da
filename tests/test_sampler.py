import numpy as np
import pytest

from textgen import Sampler, TextgenError, Tokenizer, VocabularyError, build_model

TEXT = "abcdefg hij\n"


def _model(cell="lstm", layers=1, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    tok = Tokenizer.from_text(TEXT)
    model = build_model(tok.vocab_size, embedding_dim=3, units=5, num_layers=layers, cell=cell)
    # Larger weights than the default initialisers make the check sensitive to any mistake.
    for var in model.trainable_variables:
        var.assign(np.random.default_rng(seed).normal(0, 0.7, var.shape).astype(np.float32))
    return model, tok


@pytest.mark.parametrize("engine", ["numpy", "keras"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
def test_stepwise_logits_equal_full_sequence_model(engine, layers, cell):
    model, tok = _model(cell, layers)
    ids = np.random.default_rng(1).integers(0, tok.vocab_size, size=25)
    expected = np.asarray(model(ids[None, :].astype(np.int32)))[0]  # (T, vocab)
    sampler = Sampler(model, tok, engine=engine)
    sampler.reset()
    got = np.stack([sampler.step(int(i)) for i in ids])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_reset_restarts_the_state():
    model, tok = _model()
    sampler = Sampler(model, tok)
    first = sampler.step(1)
    sampler.step(2)
    assert not np.allclose(sampler.step(1), first)
    sampler.reset()
    np.testing.assert_allclose(sampler.step(1), first, atol=1e-6)


def test_generate_length_seed_and_prime():
    model, tok = _model()
    sampler = Sampler(model, tok)
    a = sampler.generate(40, temperature=1.0, prime="abc", seed=7)
    assert len(a) == 40 and set(a) <= set(TEXT)
    assert sampler.generate(40, temperature=1.0, prime="abc", seed=7) == a
    assert sampler.generate(40, temperature=1.0, prime="abc", seed=8) != a
    assert "".join(sampler.stream(40, temperature=1.0, prime="abc", seed=7)) == a
    assert sampler.generate(0) == ""


def test_greedy_is_argmax_of_the_logits():
    model, tok = _model()
    sampler = Sampler(model, tok)
    text = sampler.generate(10, temperature=0, prime="a")
    sampler.reset()
    logits = sampler.step(int(tok.encode("a")[0]))
    expected = []
    for _ in range(10):
        nxt = int(np.argmax(logits))
        expected.append(tok.chars[nxt])
        logits = sampler.step(nxt)
    assert text == "".join(expected)


def test_bad_sampling_arguments():
    model, tok = _model()
    sampler = Sampler(model, tok)
    for temperature in (-0.5, float("nan"), float("inf")):
        with pytest.raises(TextgenError, match="temperature"):
            sampler.generate(5, temperature=temperature)
    with pytest.raises(TextgenError, match="length"):
        sampler.generate(-1)
    with pytest.raises(VocabularyError, match="'Z'"):
        sampler.generate(5, prime="aZ")
    # Streams check their options when called, not when first advanced.
    with pytest.raises(VocabularyError, match="'Z'"):
        sampler.stream(5, prime="aZ")
    with pytest.raises(TextgenError, match="top-k"):
        sampler.stream_batch(2, 5, top_k=0, stop=["\n"])
    assert len(sampler.generate(5, prime="aZ", drop_unknown=True)) == 5
    with pytest.raises(TextgenError, match="top-k"):
        sampler.generate(5, top_k=0)
    with pytest.raises(TextgenError, match="top-p"):
        sampler.generate(5, top_p=1.5)


def test_top_k_and_top_p_stay_inside_their_sets_while_generating():
    model, tok = _model()
    sampler = Sampler(model, tok)
    greedy = sampler.generate(60, temperature=0)
    assert sampler.generate(60, temperature=2.0, top_k=1, seed=3) == greedy
    assert sampler.generate(60, temperature=2.0, top_p=1e-6, seed=3) == greedy
    text = sampler.generate(80, temperature=1.5, prime="ab", top_k=3, seed=4)
    sampler.reset()
    sampler.step(int(tok.encode("a")[0]))
    logits = sampler.step(int(tok.encode("b")[0]))
    for char_id in tok.encode(text):  # replay the sample: every draw was among the top 3
        assert char_id in np.argsort(-logits)[:3]
        logits = sampler.step(int(char_id))


def test_single_and_batched_generation_agree():
    model, tok = _model()
    sampler = Sampler(model, tok)
    batch = sampler.generate_batch(3, 40, temperature=1.0, seed=9)
    assert sampler.generate(40, temperature=1.0, seed=9) == batch[0]
    streamed = ["".join(p) for p in zip(*sampler.stream_batch(3, 40, temperature=1.0, seed=9))]
    assert streamed == batch


def test_batch_is_reproducible_and_streams_differ():
    model, tok = _model()
    sampler = Sampler(model, tok)
    a = sampler.generate_batch(4, 30, temperature=1.0, seed=5)
    assert len(a) == 4 and all(len(t) == 30 for t in a)
    assert sampler.generate_batch(4, 30, temperature=1.0, seed=5) == a
    assert len(set(a)) > 1


def test_stop_strings_end_the_sample():
    model, tok = _model()
    sampler = Sampler(model, tok)
    full = sampler.generate(200, temperature=1.5, seed=11)
    stop = full[50:52]
    cut = sampler.generate(200, temperature=1.5, seed=11, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_stepping_rejects_ids_outside_the_vocabulary_and_wrong_batch_shapes() -> None:
    model, tok = _model()
    sampler = Sampler(model, tok)
    with pytest.raises(TextgenError, match="ids must lie in"):
        sampler.step(tok.vocab_size)
    sampler.reset(3)
    with pytest.raises(TextgenError, match="ids must lie in"):
        sampler.step_batch([0, -1, 2])
    with pytest.raises(TextgenError, match="one id per stream"):
        sampler.step_batch([0, 1])
    assert sampler.step_batch([0, 1, 2]).shape == (3, tok.vocab_size)


def test_step_refuses_a_batch_state_instead_of_starting_over():
    model, tok = _model()
    sampler = Sampler(model, tok)
    sampler.generate_batch(3, 5, seed=1)  # leaves a state of 3 streams
    with pytest.raises(TextgenError, match=r"holds 3.*reset\(1\)"):
        sampler.step(1)
    sampler.reset(1)
    assert sampler.step(1).shape == (tok.vocab_size,)
