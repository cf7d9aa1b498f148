"""``python -m rhapso_gpu`` runs the command line."""

import sys

from rhapso_gpu.cli import main

sys.exit(main())
