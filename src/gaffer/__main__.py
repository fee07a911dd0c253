"""`python -m gaffer` runs the CLI."""

from gaffer.cli import main

raise SystemExit(main())
