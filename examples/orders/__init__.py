"""The orders example: one business function (place an order in PostgreSQL) behind two front
doors, the synchronous design (`sync_api`) and Spillway (`tasks`); `python -m examples.orders`
runs both. `bench/story.py` surges them side by side (docs/seed-story.md)."""
