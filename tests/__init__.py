"""The test suite (a package, so that tests share ``tests.references``)."""
