import sys

from repnas.cli import main

sys.exit(main())
