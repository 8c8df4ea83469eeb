"""``python -m cli``."""

from kb_assistant.cli import main

main()
