"""The web dashboard (``campaignctl dashboard``): overview, campaign pages and the review queue.

``app.build_app`` makes the Starlette app; ``server.serve`` runs it with uvicorn.
"""
