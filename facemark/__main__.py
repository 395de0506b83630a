"""``python -m facemark`` (and ``torchrun -m facemark train ...``) run the command line."""
from facemark.cli import main

raise SystemExit(main())
