import sys

from driftmon.cli import main

sys.exit(main())
