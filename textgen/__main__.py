"""``python -m textgen`` runs the command line."""

from textgen.cli.commands import main

# Guarded: the server's engine processes start with ``spawn``, which imports the parent's main
# module (this one under ``python -m textgen``) and must not run the command line again.
if __name__ == "__main__":
    main()
