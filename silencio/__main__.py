import sys

from silencio.cli import main

sys.exit(main())
