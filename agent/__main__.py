"""``python -m agent`` is ``model-agent``."""

from agent.cli import main

raise SystemExit(main())
