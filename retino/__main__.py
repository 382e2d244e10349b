import sys

from retino.cli import main

sys.exit(main())
