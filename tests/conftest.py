import os
import sys

# Lets tests import helpers that sit beside them (e.g. `sage_reference`).
sys.path.insert(0, os.path.dirname(__file__))
