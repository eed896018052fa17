import sys

from buildsys.cli import main

sys.exit(main())
