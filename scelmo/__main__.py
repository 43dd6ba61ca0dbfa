"""``python -m scelmo`` runs the command line."""

from scelmo.cli import main

main()
