"""Knobs of the bound computations, in one small module so that every bound module reads them without a cycle.

Read at call time (``tunables.CHUNK_BYTES``, never ``from .tunables import``),
so tests and callers can set them.
"""

# Size of the largest coefficient tensor one backward chunk may build. A
# chunk allocates a few temporaries of this size; small chunks also stay in
# cache (on the IBP paper's MNIST CNN, 16 MiB was faster than 128 MiB).
CHUNK_BYTES = 1 << 24
# Patch-mode coefficients for conv nodes, and ReLU folded into the max-pool
# after it (both off only to cross-check in tests).
USE_PATCHES = True
FUSE_RELU_POOL = True
# alpha-CROWN: Adam steps on the lower ReLU slopes and their learning rate
# (auto_LiRPA's default rate; 20 steps take most of the gain on our nets).
ALPHA_STEPS = 20
ALPHA_LR = 0.1
