"""Suite-wide settings.

Each pytest-xdist worker is its own process; with torch's default of one thread per core, two
workers on a 2-core machine oversubscribe it and tiny-model tests slow down many times over.
One thread per worker keeps the suite fast and its timings stable.
"""

import torch

torch.set_num_threads(1)
