"""compute/count_parameters.py: parameter count and bytes per dtype."""

from helpers import load_snippet, run_snippet


def test_minilm_figures_on_the_page():
    out = run_snippet("compute/count_parameters.py")
    assert "all-MiniLM-L6-v2: 22.7 M parameters" in out
    assert "float32:   86.6 MiB" in out and "bfloat16:   43.3 MiB" in out


def test_tied_weights_count_once(smollm2):
    count = load_snippet("compute/count_parameters.py")
    _, model = smollm2
    assert model.config.tie_word_embeddings
    # SmolLM2-135M: the output head shares the embedding matrix, so it is not counted twice
    assert count.count_parameters(model) == 134_515_008
    assert count.weight_bytes(1000) == {
        "float32": 4000,
        "bfloat16": 2000,
        "int8": 1000,
        "int4": 500,
    }
