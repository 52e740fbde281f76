"""Embedded classical engine (no weights): the default when no checkpoint is configured."""
