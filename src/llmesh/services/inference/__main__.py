from llmesh.kit.server import run_service
from llmesh.services.inference.app import InferenceApp
from llmesh.services.inference.settings import InferenceSettings

if __name__ == "__main__":
    run_service(lambda settings: InferenceApp(settings), InferenceSettings)
