"""`python -m csr_vlm ...` (and `torchrun -m csr_vlm ...`) is the `csr` command."""

import sys

from .cli import main

sys.exit(main())
