"""The test suite; a package so that tests import their shared helpers as tests.support.*
(pytest.ini puts the repository root on sys.path)."""
