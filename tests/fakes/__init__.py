"""The tests of the fakes, a package so that pytest imports their conftest.py as ``fakes.conftest``.

As a bare ``conftest`` module it would replace tests/e2e/conftest.py in
``sys.modules`` whenever it loads second, breaking the e2e tests' ``from
conftest import ...``.
"""

import os
import sys

# The fake, eventstream.py, h2client.py and harness.py are top-level modules to
# each other, as they are when the fake runs as a process.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
