"""`python -m registry pull NAME` etc.: the model commands without loading the rest of tricode
(the Makefile pulls the test model this way)."""
import sys

from registry.commands import main

sys.exit(main())
