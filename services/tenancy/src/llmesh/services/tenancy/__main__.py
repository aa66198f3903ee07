from llmesh.kit.server import run_service
from llmesh.services.tenancy.app import TenancyApp
from llmesh.services.tenancy.settings import TenancySettings


def main() -> None:
    run_service(lambda settings: TenancyApp(settings), TenancySettings)


if __name__ == "__main__":
    main()
