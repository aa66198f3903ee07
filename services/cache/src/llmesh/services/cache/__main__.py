"""`python -m llmesh.services.cache` runs the cache service."""

from llmesh.kit.server import run_service
from llmesh.services.cache.app import CacheApp
from llmesh.services.cache.settings import CacheSettings


def main() -> None:
    run_service(lambda s: CacheApp(s), CacheSettings)


if __name__ == "__main__":
    main()
