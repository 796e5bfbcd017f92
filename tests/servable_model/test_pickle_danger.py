"""servable_model/pickle_danger.py: weights_only=True refuses the payload; weights_only=False runs it."""

from helpers import run_snippet


def test_payload_runs_only_without_weights_only():
    out = run_snippet("servable_model/pickle_danger.py").splitlines()
    assert out == [
        "weights_only=True refused it: UnpicklingError",
        "payload ran: False",
        "after weights_only=False, payload ran: True",
    ]
