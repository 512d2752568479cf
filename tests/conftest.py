"""Suite-wide settings.

Each pytest-xdist worker is its own process; with torch's default of one thread per core, two
workers on a 2-core machine oversubscribe it and tiny-model tests slow down many times over.
One thread per worker keeps the suite fast and its timings stable.

Fixtures every module may ask for: `tok`, the shipped default tokenizer (loaded once).

minimind caches tokenised data under $MINIMIND_CACHE (default ~/.cache/minimind); the suite points
it at a fresh temporary folder so tests never read or fill a user's cache.
"""

import os
import tempfile

import pytest
import torch

from minimind.tokenizer import load_tokenizer

torch.set_num_threads(1)
if "MINIMIND_CACHE" not in os.environ:
    # Kept referenced for the whole session; its finaliser deletes the folder when the process ends.
    _CACHE = tempfile.TemporaryDirectory(prefix="minimind-cache-")
    os.environ["MINIMIND_CACHE"] = _CACHE.name


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()
