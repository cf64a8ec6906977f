"""`python -m mobilenet` (and `torchrun -m mobilenet`) run the command line."""

from mobilenet.cli import main

raise SystemExit(main())
