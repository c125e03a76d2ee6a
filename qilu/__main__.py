"""`python -m qilu` runs the same CLI as `qilu`."""

from qilu.cli import main

main()
