"""servable_model/save_load_safetensors.py: the page claims a reload changes nothing."""

import re

from helpers import run_snippet


def test_reload_is_bit_exact(tmp_path):
    out = run_snippet("servable_model/save_load_safetensors.py", str(tmp_path / "copy"))
    assert "max difference after reload: 0.0" in out
    tensors, megabytes = re.search(r"saved (\d+) tensors, ([\d.]+) MB", out).groups()
    assert int(tensors) > 100
    # the file holds exactly the float32 weights: 22.7 M parameters x 4 bytes
    assert (
        abs(float(megabytes) - (tmp_path / "copy" / "model.safetensors").stat().st_size / 1e6) < 0.1
    )
    assert 85 < float(megabytes) < 95
