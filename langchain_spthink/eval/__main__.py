"""``python -m langchain_spthink.eval eval|report ...``: the eval subcommands on their own."""

import sys

from langchain_spthink.eval.cli import main

sys.exit(main())
