"""WSGI config for the test project, as startproject writes it, plus the
probe that records where each database connection opens and closes."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproject.settings")

application = get_wsgi_application()

from . import probe  # noqa: E402  (after setup: it patches Django's backend)

probe.install()
