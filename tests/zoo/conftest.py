import os
import sys

# The library modules import `zoo_data` (and the tests `harness`) by name.
sys.path.insert(0, os.path.dirname(__file__))
