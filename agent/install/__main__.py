"""``python -m agent.install install|uninstall ...`` (what ``deploy/install.sh`` runs)."""

import sys

from agent.install.main import main

sys.exit(main(sys.argv[1:]))
