"""``python -m langchain_spthink.cli``: the ``spthink`` command line."""

from langchain_spthink.cli.main import main

main()
