"""``python -m archiver.cli``: the same command line as ``titan-archiver``."""

from archiver.cli.main import main

main()
