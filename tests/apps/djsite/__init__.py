"""A minimal Django project that tests/test_wsgi.py serves through Rex."""
