"""`python -m ferlab ...` is the `ferlab` command (torchrun -m ferlab ... too)."""
import sys

from .cli import main

sys.exit(main())
