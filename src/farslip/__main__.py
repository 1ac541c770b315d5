"""``python -m farslip`` (what torchrun launches): the farslip command line."""
import sys

from .cli import main

sys.exit(main())
