"""Why you never unpickle a model file you did not make: loading it runs the author's code.

A pickle stores instructions for rebuilding objects, and one instruction may be "call this
function". This file builds a harmless booby-trapped checkpoint whose payload only writes a marker
file, then loads it twice: `torch.load(weights_only=True)` (the default since PyTorch 2.6) refuses
it; `weights_only=False` runs the payload. safetensors cannot carry code at all.

    python snippets/servable_model/pickle_danger.py
"""

import pathlib
import pickle
import tempfile

import torch


class Payload:
    """Unpickling this calls pathlib.Path.touch(marker): any function could stand in its place."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


folder = pathlib.Path(tempfile.mkdtemp())
marker = folder / "payload-ran"
checkpoint = folder / "model.pt"
torch.save({"weight": torch.zeros(2, 2), "extra": Payload(marker)}, checkpoint)

try:
    torch.load(checkpoint, weights_only=True)
except pickle.UnpicklingError as error:  # it names the global it refused to load
    print(f"weights_only=True refused it: {type(error).__name__}")
print(f"payload ran: {marker.exists()}")

torch.load(checkpoint, weights_only=False)  # what old code, and `pickle.load`, do
print(f"after weights_only=False, payload ran: {marker.exists()}")
