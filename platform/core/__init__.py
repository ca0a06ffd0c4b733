"""Shared portal pieces: the base templates, home and health pages, typed live events, demo data."""
