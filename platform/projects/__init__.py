"""Projects: the training projects researchers run and volunteers join."""
