"""``python -m mtbert`` is the ``mtbert`` command (torchrun uses this form)."""

from mtbert.cli import main

main()
