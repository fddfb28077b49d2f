"""nginx config rendering for the local and compose deployments."""
