"""``python -m bench.peers``: see bench.peers.cli."""

import sys

from bench.peers.cli import main

sys.exit(main())
