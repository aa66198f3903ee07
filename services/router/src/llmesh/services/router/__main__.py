"""`python -m llmesh.services.router`"""

from llmesh.kit.server import run_service
from llmesh.services.router.app import RouterApp
from llmesh.services.router.settings import RouterSettings


def main() -> None:
    run_service(lambda s: RouterApp(s), RouterSettings)


if __name__ == "__main__":
    main()
