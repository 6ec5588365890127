"""`python -m ops.experiments <name>`: the same as `gpo experiment <name>`."""

from ops.experiments import main

raise SystemExit(main())
