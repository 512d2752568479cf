"""Suite-wide settings.

Each pytest-xdist worker is its own process; with torch's default of one thread per core, two
workers on a 2-core machine oversubscribe it and tiny-model tests slow down many times over.
One thread per worker keeps the suite fast and its timings stable.

Fixtures every module may ask for: `tok`, the shipped default tokenizer (loaded once).
"""

import pytest
import torch

from minimind.tokenizer import load_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()
