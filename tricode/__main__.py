"""`python -m tricode ...`: the same as the `tricode` command."""
import sys

from tricode.cli import main

sys.exit(main())
