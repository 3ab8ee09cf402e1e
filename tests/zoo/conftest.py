import os
import sys

# The library modules import `common` by name.
sys.path.insert(0, os.path.dirname(__file__))
