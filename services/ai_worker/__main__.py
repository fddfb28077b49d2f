"""`python -m services.ai_worker --host H --port P`"""

from services.common.serve import serve

if __name__ == "__main__":
    serve("services.ai_worker.app:create_app", default_port=8100)
