"""`python -m ops.bench <name>`: the same as `gpo bench <name>`."""

from ops.bench import main

raise SystemExit(main())
