import os

# Tests run on the CPU even where a GPU is present, and never grab all its memory.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
