import os
import sys

# Test helpers (tests/models.py) are imported by name; the package itself comes from the installed wheel.
sys.path.insert(0, os.path.dirname(__file__))
