"""`python -m llmesh.services.edge`"""

from llmesh.kit.server import run_service
from llmesh.services.edge.app import EdgeApp
from llmesh.services.edge.settings import EdgeSettings


def main() -> None:
    run_service(lambda s: EdgeApp(s), EdgeSettings)


if __name__ == "__main__":
    main()
