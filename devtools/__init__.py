"""Development tooling shared by the tests and the scripts (never shipped: the wheel holds only
``appliance*``).

Scripts import from here, never from ``tests/``: a benchmark or a drill must not depend on the
test suite's layout, and the suite must not carry code only the scripts need.
"""
