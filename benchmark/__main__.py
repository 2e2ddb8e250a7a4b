import sys

from lesionbench.cli import main

sys.exit(main())
