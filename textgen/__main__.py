"""``python -m textgen`` runs the command line."""

from textgen.cli.commands import main

main()
