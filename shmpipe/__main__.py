import sys

from shmpipe.cli import main

sys.exit(main())
