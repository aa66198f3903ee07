"""`python -m llmesh.services.classifier` runs the classifier service."""

from llmesh.kit.server import run_service
from llmesh.services.classifier.app import ClassifierApp
from llmesh.services.classifier.settings import ClassifierSettings


def main() -> None:
    run_service(lambda s: ClassifierApp(s), ClassifierSettings)


if __name__ == "__main__":
    main()
