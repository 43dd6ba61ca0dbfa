"""``python -m scelmo`` runs the command line."""

from .cli import main

main()
