"""The CLI's tests run against the services' own in-process hosts: their fixtures, reused."""

from services.router.tests.conftest import client, router_host, upstreams  # noqa: F401 (fixtures)
from services.tenancy.tests.conftest import admin, admin_token, postgres_server, service, store_url  # noqa: F401 (fixtures)
