import sys

from motorpool.cli import main

sys.exit(main())
