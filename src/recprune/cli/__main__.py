"""``python -m recprune.cli``."""

from recprune.cli import main

main()
