"""`python -m services.ws_gateway --host H --port P`"""

from services.common.serve import serve

if __name__ == "__main__":
    serve("services.ws_gateway.app:create_app", default_port=8000)
