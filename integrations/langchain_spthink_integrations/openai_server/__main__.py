"""``python -m langchain_spthink_integrations.openai_server``: the same as ``spthink serve``."""

from __future__ import annotations

import sys

from langchain_spthink_integrations.openai_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
