import sys

from recede.cli import main

sys.exit(main())
