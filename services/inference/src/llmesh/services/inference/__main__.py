from llmesh.kit.server import run_service
from llmesh.services.inference.app import InferenceApp
from llmesh.services.inference.settings import InferenceSettings


def main() -> None:
    run_service(lambda settings: InferenceApp(settings), InferenceSettings)


if __name__ == "__main__":
    main()
