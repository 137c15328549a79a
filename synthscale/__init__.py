"""synthscale: compute-controlled comparison of diffusion, masked-token and next-token image synthesis."""

import os

# OpenMP spin-waiting stalls a 2-core machine whose second core is busy (README: Configs…). This must be
# set before torch is imported, so the package sets it on import unless the user chose a policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
