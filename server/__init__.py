"""ponderscope's web layer: FastAPI app, one router per resource, models loaded once."""
