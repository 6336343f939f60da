"""The command line: parse, call one library function through a package's front, print.

``commands`` holds the main group and its commands, ``group`` the click group that turns a
``TextgenError`` into one line and an exit code and loads a command's module only when it runs
(``corpus``, ``inspect``). Importing it loads neither numpy nor TensorFlow.
"""

from textgen.cli.commands import main

__all__ = ["main"]
