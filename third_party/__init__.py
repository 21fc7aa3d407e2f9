"""Material from other projects that the tests and scripts need, carried with its licence."""
