"""Persistence: SQLAlchemy 2 async models, the store, and feedback export."""
