"""`python -m seqsched_cli COMMAND ...` (what `accelerate launch -m seqsched_cli serve ...` runs)."""

import sys

from seqsched_cli.main import main

sys.exit(main())
