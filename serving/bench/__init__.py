"""`seqsched bench`: strategies side by side on the same prompts (serving.bench.command), the table's rows and their
summaries (rows), what is settled before the rows run (setup) and the files it writes (report)."""

from serving.bench.command import *  # noqa: F403
from serving.bench.command import __all__  # noqa: F401
